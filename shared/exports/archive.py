"""A ZIP archive streamed into a multipart upload: never whole in memory, and resumable.

:class:`PartSink` is the file :mod:`zipfile` writes to: it keeps what was written until it holds a
part's worth (``part_bytes``, at least the 5 MiB S3 and R2 require of every part but the last) and
uploads it, so it never holds much more than one part plus one write (zipfile's writes are a
header, or a chunk of a member as we read it: 1 MiB). It answers ``tell`` (zipfile records where
each member starts) but not ``seek``, so zipfile writes each member's CRC and sizes after its data
(data descriptors) instead of going back to its header.

A delivery that runs out of time stops at a member boundary and saves a :class:`Checkpoint`: the
upload, the parts and their ETags, the offset, the central directory so far (each member's name,
offset, CRC and sizes), and the bytes written since the last part (less than a part: they are
saved as an object of their own, the *tail*). The next delivery builds a :class:`ArchiveWriter`
from it and goes on where it stopped: the tail first, then its next part number, its offsets and,
at the end, one central directory listing every member.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from shared.storage import MIN_PART_BYTES, UploadedPart

if TYPE_CHECKING:
    from shared.storage import ObjectStore


class MemberState(BaseModel):
    """One member of the central directory, as zipfile needs it to write the directory again."""

    model_config = ConfigDict(extra="forbid")

    name: str
    date_time: tuple[int, int, int, int, int, int]
    compress_type: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int
    flag_bits: int
    external_attr: int
    create_system: int
    create_version: int
    extract_version: int


class Checkpoint(BaseModel):
    """Where a build stopped: enough to go on writing the same archive in another delivery."""

    model_config = ConfigDict(extra="forbid")

    upload_id: str
    key: str
    parts: list[tuple[int, str]] = Field(default_factory=list)  # (number, ETag), in order
    offset: int = 0  # bytes uploaded (every part whole)
    next_row: int = 0  # the first row not written yet
    members: list[MemberState] = Field(default_factory=list)
    missing: list[int] = Field(default_factory=list)  # rows whose object was gone when read
    tail_key: str | None = None  # the bytes written after the last part (an object of their own)


class PartSink(io.RawIOBase):
    """Write-only, tell-able, unseekable: what is written goes to the multipart upload part by part."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        upload_id: str,
        *,
        part_bytes: int,
        parts: Sequence[UploadedPart] = (),
        offset: int = 0,
        tail: bytes = b"",
        min_part_bytes: int = MIN_PART_BYTES,
    ) -> None:
        super().__init__()
        if part_bytes < min_part_bytes:
            raise ValueError(f"parts must be at least {min_part_bytes} bytes")
        self.store, self.key, self.upload_id = store, key, upload_id
        self.part_bytes = part_bytes
        self.min_part_bytes = min_part_bytes
        self.parts: list[UploadedPart] = list(parts)
        self.offset = offset  # bytes uploaded
        self._buffer = bytearray(tail)  # what an earlier delivery wrote after its last part
        self.peak_buffer = len(self._buffer)  # the most this sink ever held (the benchmark and tests read it)
        self.abandoned = False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.offset + len(self._buffer)

    def abandon(self) -> None:
        """Drop everything written from now on: a delivery that failed uploads nothing more."""
        self.abandoned = True
        self._buffer = bytearray()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.abandoned:
            return view.nbytes
        self._buffer += view
        self.peak_buffer = max(self.peak_buffer, len(self._buffer))
        if len(self._buffer) >= self.part_bytes:
            self._upload()
        return view.nbytes

    def flush(self) -> None:
        # zipfile flushes after the end record: the last part goes when the caller finishes the archive.
        return None

    def cut(self) -> bytes:
        """Upload what is held if it can be a part (not the last one); what is still held (the tail)."""
        if len(self._buffer) >= self.min_part_bytes:
            self._upload()
        return bytes(self._buffer)

    def finish(self) -> list[UploadedPart]:
        """Upload the rest as the last part; the parts to complete the upload with."""
        if self._buffer or not self.parts:
            self._upload()
        return list(self.parts)

    def _upload(self) -> None:
        number = len(self.parts) + 1
        self.parts.append(self.store.upload_part(self.key, self.upload_id, number, bytes(self._buffer)))
        self.offset += len(self._buffer)
        self._buffer = bytearray()


def _date_time(when: datetime) -> tuple[int, int, int, int, int, int]:
    moment = max(when.replace(tzinfo=None), datetime(1980, 1, 1))  # ZIP dates start in 1980
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


@dataclass
class ArchiveWriter:
    """A ZIP archive written to a :class:`PartSink`, started fresh or from a checkpoint's members."""

    sink: PartSink
    members: Sequence[MemberState] = ()
    zip: zipfile.ZipFile = field(init=False)

    def __post_init__(self) -> None:
        self.zip = zipfile.ZipFile(self.sink, "w", allowZip64=True)  # type: ignore[arg-type]
        for state in self.members:
            info = zipfile.ZipInfo(state.name, state.date_time)
            info.compress_type = state.compress_type
            info.CRC, info.compress_size, info.file_size = state.crc, state.compress_size, state.file_size
            info.header_offset, info.flag_bits = state.header_offset, state.flag_bits
            info.external_attr, info.create_system = state.external_attr, state.create_system
            info.create_version, info.extract_version = state.create_version, state.extract_version
            self.zip.filelist.append(info)
            self.zip.NameToInfo[info.filename] = info
        self.zip.start_dir = self.sink.tell()

    def add_stream(self, name: str, chunks: Iterator[bytes], when: datetime) -> int:
        """Store a member as it is read (images and videos are compressed already: no deflate);
        its size."""
        info = zipfile.ZipInfo(name, _date_time(when))
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        size = 0
        member = self.zip.open(info, "w")
        try:
            for chunk in chunks:
                member.write(chunk)
                size += len(chunk)
        except BaseException:
            # A read failed mid-member: closing it would write (and upload) a truncated member.
            self.sink.abandon()
            member.close()
            raise
        member.close()
        return size

    def add_bytes(self, name: str, data: bytes, when: datetime) -> None:
        """A small member written at once, deflated (the manifest)."""
        info = zipfile.ZipInfo(name, _date_time(when))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        self.zip.writestr(info, data)

    def states(self) -> list[MemberState]:
        """The central directory so far, to save in a checkpoint."""
        return [
            MemberState(
                name=info.filename,
                date_time=info.date_time,
                compress_type=info.compress_type,
                crc=info.CRC,
                compress_size=info.compress_size,
                file_size=info.file_size,
                header_offset=info.header_offset,
                flag_bits=info.flag_bits,
                external_attr=info.external_attr,
                create_system=info.create_system,
                create_version=info.create_version,
                extract_version=info.extract_version,
            )
            for info in self.zip.filelist
        ]

    def abandon(self) -> None:
        """Give the archive up: nothing more is uploaded, and the ZipFile closes without writing."""
        self.sink.abandon()
        try:
            self.zip.close()
        except ValueError:
            return  # a member is still open: the ZipFile is left unclosed, and its writes go nowhere

    def close(self) -> list[UploadedPart]:
        """Write the central directory and the end record; the parts to complete the upload with."""
        self.zip.close()
        return self.sink.finish()
