"""Every board file in boards/ is valid, and the supported set is complete."""

from __future__ import annotations

from pilegate import paths, siteconfig


def test_every_board_file_is_valid():
    boards, problems = siteconfig.load_boards()
    assert problems == [], "\n".join(map(str, problems))
    assert len(boards) == len(list(paths.boards_dir().glob("*.toml")))


def test_supported_boards_are_present_with_what_installers_need():
    boards, _ = siteconfig.load_boards()
    platforms = {b["platform"] for b in boards.values()}
    assert {"esp32", "esp32s3", "rpi"} <= platforms
    assert "esp32-devkitc-max3485" in boards and "rpi4-usb-rs485" in boards
    assert "rpi-rs485-hat" in boards and "esp32s3-psram-max3485" in boards
    assert boards["esp32s3-psram-max3485"]["psram_mb"] > 0
    for board in boards.values():
        roles = {u["role"] for u in board["uart"]}
        assert roles == {"rs485", "console"}, board["id"]
        assert board.get("input") and board.get("relay"), board["id"]
        if board["platform"].startswith("esp32"):
            assert "firmware_offset" in board
            rs485 = next(u for u in board["uart"] if u["role"] == "rs485")
            assert {"tx", "rx", "de"} <= set(rs485), board["id"]
