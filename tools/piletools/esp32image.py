"""`pilegate image`: one flashable ESP32 image = official MicroPython + a LittleFS holding the site.

Where MicroPython keeps its file system (read from micropython/micropython, ports/esp32):

* `modules/flashbdev.py` mounts the data partition labelled `vfs` (LittleFS v2), or `ffat`
  (FAT, TinyUF2 layouts), as `/`; `modules/inisetup.py` formats it on first boot only when its
  first block is erased (all 0xFF): a file system we write is mounted as it is.
* Up to 1.25 the partition tables (`partitions-*.csv`) list a `vfs` data partition.  From 1.26
  they do not: `main.c` (`MICROPY_BOARD_STARTUP`) reads the chip's real flash size and, when
  there is no `vfs`/`ffat` partition, registers a `vfs` partition from the end of the last
  partition in the table to the end of flash.  So the region depends on the board's flash size,
  not on what the image was built for: a 4 MiB build on an 8 MiB board has a larger `/`.
* `esp32_partition.c`: 4096-byte blocks (NATIVE_BLOCK_SIZE_BYTES); `extmod/vfs_lfs.c` formats
  with readsize = progsize = lookahead = 32; `lib/littlefs` is littlefs 2.11 (disk version
  2.1), the same littlefs that littlefs-python 0.19 wraps.

The partition table sits at flash 0x8000 (ESP-IDF's default offset): 32-byte entries (magic
0xAA50, type, subtype, offset, size, label, flags), an MD5 entry (0xEBEB) over the entries,
then 0xFF.  The official MicroPython image is flashed at the board's `firmware_offset`
(0x1000 on the ESP32, 0 on the S3/C3), so the table is at file offset 0x8000 - firmware_offset.

No device secret is ever put into an image: the device key is generated on the board at its
first start (docs/esp32.md), and nothing under /data is written here.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_SIZE = 0xC00
ENTRY_MAGIC = 0xAA50
MD5_MAGIC = 0xEBEB
BLOCK_SIZE = 4096  # esp32_partition.c NATIVE_BLOCK_SIZE_BYTES
LFS_READ_SIZE = LFS_PROG_SIZE = LFS_LOOKAHEAD = 32  # extmod/vfs_lfs.c defaults
TYPE_DATA = 0x01
ROOT = Path(__file__).resolve().parents[2]


class ImageError(Exception):
    """The inputs cannot make an image; the message says what and what to do."""


@dataclass(frozen=True)
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.size


def parse_partition_table(blob: bytes) -> list[Partition]:
    """Entries of a binary ESP-IDF partition table (ImageError when it is not one)."""
    parts: list[Partition] = []
    md5 = hashlib.md5()
    for pos in range(0, min(len(blob), PARTITION_TABLE_SIZE), 32):
        entry = blob[pos : pos + 32]
        if len(entry) < 32:
            break
        magic = struct.unpack_from("<H", entry)[0]
        if magic == ENTRY_MAGIC:
            _, ptype, sub, off, size = struct.unpack_from("<HBBII", entry)
            label = entry[12:28].split(b"\0", 1)[0].decode("ascii", "replace")
            flags = struct.unpack_from("<I", entry, 28)[0]
            parts.append(Partition(label, ptype, sub, off, size, flags))
            md5.update(entry)
        elif magic == MD5_MAGIC:
            if entry[16:32] != md5.digest():
                raise ImageError("the partition table's MD5 does not match its entries: the image is damaged")
            break
        elif entry == b"\xff" * 32:
            break
        else:
            raise ImageError(f"unexpected bytes in the partition table at entry {pos // 32}")
    if not parts:
        raise ImageError("no partition table at flash offset 0x8000")
    return parts


def build_partition_table(parts: list[Partition]) -> bytes:
    """The binary table (gen_esp32part.py's format), padded with 0xFF to 0xC00 bytes."""
    out = bytearray()
    for p in parts:
        label = p.label.encode("ascii")[:16].ljust(16, b"\0")
        out += struct.pack("<HBBII", ENTRY_MAGIC, p.type, p.subtype, p.offset, p.size) + label
        out += struct.pack("<I", p.flags)
    out += struct.pack("<H", MD5_MAGIC) + b"\xff" * 14 + hashlib.md5(bytes(out)).digest()
    return bytes(out.ljust(PARTITION_TABLE_SIZE, b"\xff"))


@dataclass(frozen=True)
class Region:
    offset: int
    size: int
    how: str  # words for the installer

    @property
    def block_count(self) -> int:
        return self.size // BLOCK_SIZE


def fs_region(parts: list[Partition], flash_size: int) -> Region:
    """Where MicroPython mounts `/` (module doc): the `vfs` (or `ffat`) data partition, else
    from the end of the last partition (rounded up to a block) to the end of flash."""
    for label in ("vfs", "ffat"):
        found = [p for p in parts if p.type == TYPE_DATA and p.label == label]
        if found:
            p = found[0]
            if label == "ffat":
                raise ImageError(
                    "this MicroPython image keeps its file system in an 'ffat' (FAT) partition; "
                    "pilegate writes LittleFS: use the official ESP32 build for the board"
                )
            return Region(p.offset, p.size, f"the 'vfs' partition in the table (0x{p.offset:x}, {p.size} bytes)")
    end = max(p.end for p in parts)
    start = -(-end // BLOCK_SIZE) * BLOCK_SIZE
    if start >= flash_size:
        raise ImageError(f"no room for a file system: the partitions end at 0x{end:x}, flash is {flash_size} bytes")
    return Region(
        start,
        flash_size - start,
        f"no 'vfs' partition (MicroPython 1.26+): from the end of the last partition 0x{start:x} "
        f"to the end of the board's {flash_size // 2**20} MiB flash",
    )


def read_firmware(fw: bytes, firmware_offset: int) -> list[Partition]:
    """The partition table inside an official MicroPython image flashed at `firmware_offset`."""
    if not fw or fw[0] != 0xE9:
        raise ImageError(
            "this is not an ESP32 firmware image (it does not start with the bootloader's 0xE9 byte): "
            "download the .bin for your board from micropython.org/download"
        )
    pos = PARTITION_TABLE_OFFSET - firmware_offset
    if pos < 0 or len(fw) < pos + 32:
        raise ImageError("the image is too short to hold a partition table: is it the full firmware .bin?")
    return parse_partition_table(fw[pos : pos + PARTITION_TABLE_SIZE])


def build_littlefs(files: dict[str, bytes], region: Region) -> bytes:
    """A LittleFS image of the region's size holding `files` (path -> bytes)."""
    from littlefs import LittleFS

    fs = LittleFS(
        block_size=BLOCK_SIZE,
        block_count=region.block_count,
        read_size=LFS_READ_SIZE,
        prog_size=LFS_PROG_SIZE,
        lookahead_size=LFS_LOOKAHEAD,
    )
    for path in sorted(files):
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(files[path])
    return bytes(fs.context.buffer)


def board_files(
    site: Any, firmware_dir: Path, umqtt_dir: Path, ca: Path | None, command_key: Path | None
) -> dict[str, bytes]:
    """Everything the board's `/` holds for this site (docs/esp32.md "What runs where")."""
    cfg = site.config
    files: dict[str, bytes] = {}
    for name in ("boot.py", "main.py"):
        files["/" + name] = (firmware_dir / name).read_bytes()
    for mpy in sorted(firmware_dir.rglob("*.mpy")):
        rel = mpy.relative_to(firmware_dir)
        if rel.parts[0] in ("pilecore", "pilefw"):
            files["/lib/" + rel.as_posix()] = mpy.read_bytes()
    if not (umqtt_dir / "umqtt" / "simple.py").is_file():
        raise ImageError(
            f"{umqtt_dir}: no umqtt/simple.py there (the board's MQTT client); run 'make setup', "
            "or give --umqtt with the folder holding umqtt/simple.py"
        )
    for py in sorted(umqtt_dir.rglob("*.py")):
        files["/lib/" + py.relative_to(umqtt_dir).as_posix()] = py.read_bytes()
    files["/config.json"] = site.json_bytes
    wanted = [
        ("mqtt", "ca_file", ca, "--ca", "the platform's CA certificate"),
        ("signing", "platform_key", command_key, "--command-key", "the platform's command key"),
    ]
    for section, key, local, option, what in wanted:
        board_path = cfg.get(section, {}).get(key)
        if board_path and local is None:
            raise ImageError(f"the site names {board_path} for {what} ([{section}] {key}); give the file with {option}")
        if local is not None:
            if not board_path:
                raise ImageError(
                    f"{option} given but the site has no [{section}] {key} saying where the board reads it"
                )
            if not str(board_path).startswith("/") or str(board_path).startswith("/data/"):
                raise ImageError(f"[{section}] {key} = {board_path!r}: an ESP32 path outside /data, e.g. /certs/x.pem")
            data = Path(local).read_bytes()
            if b"PRIVATE KEY" in data:
                raise ImageError(f"{local} holds a PRIVATE KEY: images never carry secrets; give the public file")
            files[str(board_path)] = data
    for path in files:
        if path.startswith("/data/"):
            raise ImageError(f"{path}: nothing under /data goes into an image (device secrets are made on the board)")
    return files


def compiled_firmware(out: Path) -> Path:
    """Compile firmware/ with mpy-cross into `out` (the same build as `make firmware`)."""
    from piletools import firmware_build

    _, errors = firmware_build.compile_all(firmware_build.SRC, out)
    if errors:
        raise ImageError("mpy-cross rejected: " + "; ".join(errors))
    return out


def merge(chip: str, firmware_offset: int, fw: bytes, region: Region, fs: bytes) -> bytes:
    """esptool's merge-bin (as a library): MicroPython at its offset, the file system at the
    region; the result is flashed at 0x0."""
    from esptool.cmds import merge_bin

    out = merge_bin([(firmware_offset, fw), (region.offset, fs)], chip=chip, output=None)
    if out is None:
        raise ImageError("esptool merge-bin returned nothing")
    return out


def check_merged(image: bytes, chip: str, firmware_offset: int, parts: list[Partition]) -> list[str]:
    """What esptool says of the merged image: the bootloader at `firmware_offset` and every app
    partition load with esptool's image loader (`image-info`'s parser), with a valid checksum
    and, where present, a valid SHA-256 digest.  Returns one line per image; ImageError if
    esptool rejects one."""
    from esptool.bin_image import LoadFirmwareImage

    lines = []
    spots = [("bootloader", firmware_offset)] + [(p.label, p.offset) for p in parts if p.type == 0x00]
    for name, off in spots:
        if image[off : off + 1] != b"\xe9":
            if name == "bootloader":
                raise ImageError(f"no bootloader at 0x{off:x} in the merged image")
            continue  # an empty OTA slot
        try:
            img = LoadFirmwareImage(chip, image[off:])
        except Exception as exc:  # esptool raises FatalError and struct errors alike
            raise ImageError(f"esptool rejects the {name} image at 0x{off:x}: {exc}") from None
        if img.checksum != img.calculate_checksum():
            raise ImageError(f"the {name} image at 0x{off:x} has a bad checksum")
        digest = getattr(img, "stored_digest", None)
        if digest is not None and digest != getattr(img, "calc_digest", None):
            raise ImageError(f"the {name} image at 0x{off:x} has a bad SHA-256 digest")
        lines.append(
            f"{name} at 0x{off:x}: {len(img.segments)} segments, checksum valid"
            + (", SHA-256 valid" if digest is not None else "")
        )
    return lines


def chip_of(board: dict[str, Any]) -> str:
    """The esptool chip name of a board file (`chip`, else its `platform`)."""
    return str(board.get("chip") or board.get("platform"))


def main(args: Any) -> int:
    import sys

    from pilegate import siteconfig

    site, problems = siteconfig.load_site(Path(args.site))
    if site is None:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{args.site}: {len(problems)} problem(s); run 'pilegate check {args.site}'", file=sys.stderr)
        return 2
    boards, _ = siteconfig.load_boards()
    board_id = args.board or site.config["gateway"]["board"]
    board = boards.get(board_id)
    if board is None or not str(board.get("platform", "")).startswith("esp32"):
        known = ", ".join(sorted(b for b, d in boards.items() if str(d.get("platform", "")).startswith("esp32")))
        print(f"pilegate image: --board {board_id}: not an ESP32 board file (ESP32 boards: {known})", file=sys.stderr)
        return 2
    if site.config["gateway"]["board"] != board_id:
        print(
            f"pilegate image: the site is for board {site.config['gateway']['board']}, not {board_id}: "
            "the config's UARTs and pins would be wrong",
            file=sys.stderr,
        )
        return 2
    try:
        fw = Path(args.micropython).read_bytes()
        offset = int(board["firmware_offset"])
        parts = read_firmware(fw, offset)
        region = fs_region(parts, int(board["flash_mb"]) * 2**20)
        with tempfile.TemporaryDirectory() as tmp:
            fwdir = compiled_firmware(Path(tmp) / "firmware")
            umqtt = Path(args.umqtt) if args.umqtt else ROOT / "build" / "deps" / "umqtt"
            files = board_files(site, fwdir, umqtt, args.ca, args.command_key)
        fs = build_littlefs(files, region)
        image = merge(chip_of(board), offset, fw, region, fs)
        checks = check_merged(image, chip_of(board), offset, parts)
    except OSError as exc:
        print(f"pilegate image: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ImageError as exc:
        print(f"pilegate image: {exc}", file=sys.stderr)
        return 2
    Path(args.output).write_bytes(image)
    used = sum(len(b) for b in files.values())
    print(f"MicroPython file system: {region.how}")
    for line in checks:
        print(f"esptool: {line}")
    print(f"LittleFS: {region.block_count} blocks of {BLOCK_SIZE} bytes, {len(files)} files, {used:,} bytes")
    for path in sorted(files):
        print(f"  {path:<40} {len(files[path]):>8,} bytes")
    print(f"{args.output}: {len(image):,} bytes; flash it at 0x0: pilegate flash {args.output} --port /dev/ttyUSB0")
    print("no device secret is in the image: the board makes its key at first start")
    return 0


def read_littlefs(image: bytes, region: Region) -> Any:
    """Mount the file system of a merged image (for checks): a littlefs.LittleFS."""
    from littlefs import LittleFS

    fs = LittleFS(
        block_size=BLOCK_SIZE,
        block_count=region.block_count,
        read_size=LFS_READ_SIZE,
        prog_size=LFS_PROG_SIZE,
        lookahead_size=LFS_LOOKAHEAD,
        mount=False,
    )
    fs.context.buffer = bytearray(image[region.offset : region.offset + region.size])
    fs.mount()
    return fs
