// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

/// @title PoolWhitelist
/// @notice The venues a router may trade through. Listing a pool gives the admin no
/// power over users' funds: every router measures what it receives and enforces the
/// user's own bound, so a bad pool can only make a trade fail.
abstract contract PoolWhitelist is Ownable2Step {
    /// @custom:security write-protection="onlyOwner()"
    mapping(address pool => bool) public isPool;

    event PoolSet(address indexed pool, bool allowed);

    error PoolNotAllowed(address pool);
    error RenounceDisabled();

    constructor(address owner_) Ownable(owner_) {}

    /// @notice Lists or delists a pool.
    function setPool(address pool, bool allowed) external onlyOwner {
        isPool[pool] = allowed;
        emit PoolSet(pool, allowed);
    }

    /// @notice Disabled: without an owner, listing and unpausing would be frozen for good.
    /// Hand over with transferOwnership / acceptOwnership instead.
    function renounceOwnership() public pure override {
        revert RenounceDisabled();
    }
}
