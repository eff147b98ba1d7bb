// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "./utils/Test.sol";
import {BuilderTip} from "../src/BuilderTip.sol";

contract RefusesEth {}

contract BuilderTipTest is Test {
    BuilderTip internal tipper = new BuilderTip();

    function testFuzz_tip_paysTheCoinbaseExactly(uint96 amount) public {
        address builder = makeAddr("builder");
        vm.coinbase(builder);
        vm.deal(address(this), amount);
        tipper.tip{value: amount}();
        vm.assertEq(builder.balance, amount, "builder paid");
        vm.assertEq(address(tipper).balance, 0, "nothing kept");
    }

    function test_tip_revertsWhenTheCoinbaseRefuses() public {
        vm.coinbase(address(new RefusesEth()));
        vm.deal(address(this), 1 ether);
        vm.expectRevert(BuilderTip.TipFailed.selector);
        tipper.tip{value: 1 ether}();
    }
}
