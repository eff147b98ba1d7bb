import json

import pytest
from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

from keepers import toolchain
from keepers.chain import artifacts
from keepers.chain.artifacts import PROJECT_CONTRACTS, load_artifact, package_artifacts
from keepers.chain.reverts import RevertDecoder
from keepers.toolchain import ToolchainError, artifacts_dir


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


def test_packaged_artifacts_are_forge_output_less_what_nothing_reads(tmp_path):
    dest = tmp_path / "compiled"
    (dest / "Gone.sol").mkdir(parents=True)  # a contract dropped from PROJECT_CONTRACTS
    written = package_artifacts(artifacts_dir(), dest)
    assert sorted(p.parent.name for p in written) == sorted(f"{n}.sol" for n in PROJECT_CONTRACTS)
    assert not (dest / "Gone.sol").exists()
    for name in PROJECT_CONTRACTS:
        shipped, built = load_artifact(name, dest), load_artifact(name)
        assert (shipped.abi, shipped.bytecode) == (built.abi, built.bytecode), name
    assert sum(p.stat().st_size for p in written) < 1_000_000, "abi and bytecode only, not sources or ASTs"


def test_installed_the_loader_reads_the_packaged_copy_only(tmp_path, monkeypatch):
    """Installed, REPO_ROOT is site-packages: another distribution's contracts/out there must
    never stand in for the package's own copy."""
    monkeypatch.delenv("KEEPERS_ARTIFACTS", raising=False)
    site = tmp_path / "site-packages"
    monkeypatch.setattr(toolchain, "REPO_ROOT", site)
    packaged = site / "keepers" / "chain" / "compiled"
    monkeypatch.setattr(toolchain, "PACKAGED_ARTIFACTS", packaged)
    (site / "contracts" / "out").mkdir(parents=True)
    assert artifacts_dir() == packaged


def test_in_a_checkout_forge_output_comes_first(tmp_path, monkeypatch):
    monkeypatch.delenv("KEEPERS_ARTIFACTS", raising=False)
    monkeypatch.setattr(toolchain, "REPO_ROOT", tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "keepers"\n')
    packaged = tmp_path / "keepers" / "chain" / "compiled"
    monkeypatch.setattr(toolchain, "PACKAGED_ARTIFACTS", packaged)
    assert artifacts_dir() == tmp_path / "contracts" / "out"  # neither: the error names forge's
    packaged.mkdir(parents=True)
    assert artifacts_dir() == packaged
    (tmp_path / "contracts" / "out").mkdir(parents=True)
    assert artifacts_dir() == tmp_path / "contracts" / "out", "a checkout's build first"


def test_with_neither_the_error_names_both_places_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "artifacts_dir", lambda: tmp_path / "contracts" / "out")
    monkeypatch.setattr(artifacts, "PACKAGED_ARTIFACTS", tmp_path / "compiled")
    load_artifact.cache_clear()
    try:
        fix = r"run `./dev build` \(forge build\)"
        with pytest.raises(
            ToolchainError, match=rf"OrderBook.json, and no copy in the package \(.*/compiled\): {fix}"
        ):
            load_artifact("OrderBook")
    finally:
        load_artifact.cache_clear()
