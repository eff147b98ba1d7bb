import json

import pytest
from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

from keepers.chain.artifacts import PROJECT_CONTRACTS, load_artifact
from keepers.chain.reverts import RevertDecoder
from keepers.toolchain import ToolchainError


def test_every_project_contract_has_abi_and_bytecode():
    for name in PROJECT_CONTRACTS:
        art = load_artifact(name)
        assert art.bytecode.startswith("0x"), name
        assert len(art.bytecode) > 100, name
        assert any(item["type"] == "function" for item in art.abi), name


def test_missing_build_output_says_how_to_fix(tmp_path):
    with pytest.raises(ToolchainError, match=r"forge build"):
        load_artifact("OrderBook", tmp_path)


def test_non_forge_json_is_rejected(tmp_path):
    (tmp_path / "X.sol").mkdir()
    (tmp_path / "X.sol" / "X.json").write_text(json.dumps({"abi": []}))
    with pytest.raises(ToolchainError, match="not a forge artifact"):
        load_artifact("X", tmp_path)


def test_revert_decoder_names_custom_errors():
    decoder = RevertDecoder(load_artifact(n) for n in PROJECT_CONTRACTS)
    data = function_signature_to_4byte_selector("KeeperFeeTooHigh(uint256,uint256)") + encode(
        ["uint256", "uint256"], [101, 100]
    )
    decoded = decoder.decode(data)
    assert decoded is not None
    assert str(decoded) == "OrderBook.KeeperFeeTooHigh(feeBps=101, maxBps=100)"


def test_revert_decoder_reads_error_string_and_unknowns():
    decoder = RevertDecoder([load_artifact("OrderBook")])
    data = bytes.fromhex("08c379a0") + encode(["string"], ["boom"])
    decoded = decoder.decode(data)
    assert decoded is not None
    assert decoded.args == {"message": "boom"}
    assert decoder.decode(b"\xde\xad\xbe\xef") is None
    assert decoder.decode(b"\x01") is None
