// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {IPriceOracle} from "./interfaces/IPriceOracle.sol";

/// @title PriceOracle
/// @notice Keeper-pushed prices (USD per whole token, 18 decimals) with round ids, a
/// deviation threshold, a heartbeat, staleness checks on read and a bound on change per update.
/// @dev One slot per asset holds everything an update reads and writes:
///   price (128) | updatedAt (32) | roundId (32) | deviationBps (16) | maxChangeBps (16) | heartbeat (32)
/// so an update costs one cold read and one write, and an update that is not due
/// returns after the read. An asset's price is written at most once per block (per
/// timestamp), so the bound on change holds per block, not per call. Round ids wrap at 2^32
/// and timestamps are kept mod 2^32 (valid until 2106), neither spilling into the next field.
contract PriceOracle is IPriceOracle, Ownable2Step {
    uint256 private constant BPS = 10_000;

    /// @notice A price older than heartbeat + this is stale on read.
    uint32 public immutable stalenessGrace;

    mapping(address asset => uint256 packed) private _feeds;
    /// @custom:security write-protection="onlyOwner()"
    mapping(address updater => bool) public isUpdater;

    event AssetConfigured(address indexed asset, uint16 deviationBps, uint16 maxChangeBps, uint32 heartbeat);
    event UpdaterSet(address indexed updater, bool allowed);
    event PriceUpdated(address indexed asset, uint256 indexed roundId, uint256 price, uint256 updatedAt);

    error NotUpdater(address caller);
    error AssetNotConfigured(address asset);
    error InvalidConfig();
    error ZeroPrice();
    error LengthMismatch();
    error PriceNotSet(address asset);
    error StalePrice(address asset, uint256 updatedAt);
    error PriceChangeTooLarge(address asset, uint256 current, uint256 proposed, uint256 maxChangeBps);
    error RenounceDisabled();

    /// @param owner_ Admin (meant to be a multisig): configures assets and updaters.
    /// @param stalenessGrace_ Seconds past the heartbeat after which a price is stale.
    constructor(address owner_, uint32 stalenessGrace_) Ownable(owner_) {
        stalenessGrace = stalenessGrace_;
    }

    /// @notice Adds or reconfigures an asset; the current price and round are kept.
    /// @param deviationBps Move that makes an update due before the heartbeat.
    /// @param maxChangeBps Largest move one update may make (the first price is free).
    /// @param heartbeat Seconds after which an update is due even without a move.
    function configureAsset(address asset, uint16 deviationBps, uint16 maxChangeBps, uint32 heartbeat)
        external
        onlyOwner
    {
        if (asset == address(0) || heartbeat == 0 || deviationBps == 0 || maxChangeBps < deviationBps) {
            revert InvalidConfig();
        }
        uint256 f = _feeds[asset];
        f = (f & ((uint256(1) << 192) - 1)) | (uint256(deviationBps) << 192) | (uint256(maxChangeBps) << 208)
            | (uint256(heartbeat) << 224);
        _feeds[asset] = f;
        emit AssetConfigured(asset, deviationBps, maxChangeBps, heartbeat);
    }

    /// @notice Allows or revokes a price updater.
    function setUpdater(address updater, bool allowed) external onlyOwner {
        isUpdater[updater] = allowed;
        emit UpdaterSet(updater, allowed);
    }

    /// @notice Pushes a price if an update is due (deviation or heartbeat).
    /// @return updated False when no update was due and nothing was written.
    function updatePrice(address asset, uint256 price) external returns (bool updated) {
        if (!isUpdater[msg.sender]) revert NotUpdater(msg.sender);
        return _update(asset, price);
    }

    /// @notice Pushes several prices; assets whose update is not due are left as they are.
    /// @return count How many prices were written.
    function updatePrices(address[] calldata assets, uint256[] calldata prices) external returns (uint256 count) {
        if (!isUpdater[msg.sender]) revert NotUpdater(msg.sender);
        if (assets.length != prices.length) revert LengthMismatch();
        for (uint256 i; i < assets.length; ++i) {
            if (_update(assets[i], prices[i])) ++count;
        }
    }

    /// @notice Whether pushing `price` now would write (the keeper's cheap pre-check).
    function isUpdateDue(address asset, uint256 price) external view returns (bool) {
        uint256 f = _feeds[asset];
        return f != 0 && _due(f, price);
    }

    /// @inheritdoc IPriceOracle
    function getPrice(address asset) external view returns (uint256 price) {
        uint256 f = _feeds[asset];
        price = uint128(f);
        // Strict equality on a stored feed word: only an updater's write changes it.
        // slither-disable-next-line incorrect-equality
        if (price == 0) revert PriceNotSet(asset);
        uint256 updatedAt = uint32(f >> 128);
        if (block.timestamp > updatedAt + uint32(f >> 224) + stalenessGrace) revert StalePrice(asset, updatedAt);
    }

    /// @inheritdoc IPriceOracle
    function tryGetPrice(address asset) external view returns (uint256 price, bool fresh) {
        uint256 f = _feeds[asset];
        price = uint128(f);
        fresh = price != 0 && block.timestamp <= uint32(f >> 128) + uint256(uint32(f >> 224)) + stalenessGrace;
    }

    /// @inheritdoc IPriceOracle
    function tryGetPrices(address a, address b) external view returns (uint256 priceA, uint256 priceB, bool fresh) {
        uint256 fa = _feeds[a];
        uint256 fb = _feeds[b];
        priceA = uint128(fa);
        priceB = uint128(fb);
        fresh = priceA != 0 && priceB != 0
            && block.timestamp <= uint32(fa >> 128) + uint256(uint32(fa >> 224)) + stalenessGrace
            && block.timestamp <= uint32(fb >> 128) + uint256(uint32(fb >> 224)) + stalenessGrace;
    }

    /// @notice The latest round as stored.
    function latestRound(address asset) external view returns (uint256 roundId, uint256 price, uint256 updatedAt) {
        uint256 f = _feeds[asset];
        return (uint32(f >> 160), uint128(f), uint32(f >> 128));
    }

    /// @notice An asset's configuration.
    function assetConfig(address asset)
        external
        view
        returns (uint16 deviationBps, uint16 maxChangeBps, uint32 heartbeat)
    {
        uint256 f = _feeds[asset];
        return (uint16(f >> 192), uint16(f >> 208), uint32(f >> 224));
    }

    /// @notice Disabled: without an owner no asset or updater could be configured again.
    function renounceOwnership() public pure override {
        revert RenounceDisabled();
    }

    function _due(uint256 f, uint256 price) private view returns (bool) {
        uint256 current = uint128(f);
        // Strict equality on a stored feed word: only an updater's write changes it.
        // slither-disable-next-line incorrect-equality
        if (current == 0) return true;
        // One write per block: a second one in the same block would stack the change bound.
        // Strict equality on the block's time: one write per block is the rule.
        // slither-disable-next-line incorrect-equality
        if (uint32(f >> 128) == uint32(block.timestamp)) return false;
        if (block.timestamp >= uint32(f >> 128) + uint256(uint32(f >> 224))) return true;
        uint256 diff = price > current ? price - current : current - price;
        return diff * BPS >= current * uint16(f >> 192);
    }

    function _update(address asset, uint256 price) private returns (bool) {
        uint256 f = _feeds[asset];
        // Strict equality on a stored feed word: only an updater's write changes it.
        // slither-disable-next-line incorrect-equality
        if (f == 0) revert AssetNotConfigured(asset);
        if (price == 0) revert ZeroPrice();
        if (!_due(f, price)) return false;
        uint256 current = uint128(f);
        if (current != 0) {
            uint256 diff = price > current ? price - current : current - price;
            uint256 maxChange = uint16(f >> 208);
            if (diff * BPS > current * maxChange) revert PriceChangeTooLarge(asset, current, price, maxChange);
        }
        if (price > type(uint128).max) revert PriceChangeTooLarge(asset, current, price, 0);
        uint256 roundId;
        unchecked {
            roundId = uint32(uint32(f >> 160) + 1);
        }
        _feeds[asset] = price | (uint256(uint32(block.timestamp)) << 128) | (roundId << 160)
            | (f & ~((uint256(1) << 192) - 1));
        emit PriceUpdated(asset, roundId, price, block.timestamp);
        return true;
    }
}
