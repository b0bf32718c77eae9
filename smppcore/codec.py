"""Wire format of PDUs: framing, encode and decode.

Encoders and decoders are generated once, at import, from :data:`smppcore.pdu.LAYOUTS`, so
each PDU type gets straight-line code (the speed of a hand-written ``struct`` decoder)
while the layout is written down exactly once. Decoding checks every limit of the spec and
raises :class:`RemoteProtocolError` with the status to answer; encoding checks the same limits
and raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from smppcore.constants import HEADER_LENGTH, RESPONSE_BIT, CommandStatus
from smppcore.errors import LocalProtocolError, RemoteProtocolError
from smppcore.pdu import (
    LAYOUTS,
    NO_BODY_ON_ERROR,
    PDU_CLASSES,
    DistributionList,
    Field,
    Pdu,
    SmeAddress,
    UnsuccessSme,
)
from smppcore.tlv import Tag, Tlv, decode_tlvs, encode_tlvs, find_tlv

#: The default largest PDU accepted: a 64 KiB message_payload plus a full submit_sm body.
DEFAULT_MAX_PDU_LENGTH = 65536 + 1024

HEADER = struct.Struct(">IIII")
_U32 = struct.Struct(">I")
_S = CommandStatus


# --- errors raised from generated code ---------------------------------------------------


def _cstr_error(frame: bytes, pos: int, end: int, f: Field, cid: int, seq: int) -> None:
    if pos + f.size > end:
        # The body ends before the string does: the PDU is shorter than its fields.
        raise RemoteProtocolError(
            f"{f.name}: body ends inside the field",
            status=_S.ESME_RINVCMDLEN,
            command_id=cid,
            sequence_number=seq,
        )
    raise RemoteProtocolError(
        f"{f.name}: longer than {f.size - 1} octets",
        status=f.status,
        command_id=cid,
        sequence_number=seq,
    )


def _field_error(message: str, status: int, cid: int, seq: int) -> None:
    raise RemoteProtocolError(message, status=status, command_id=cid, sequence_number=seq)


def _decode_dests(
    frame: bytes, pos: int, end: int, cid: int, seq: int
) -> tuple[int, tuple[SmeAddress | DistributionList, ...]]:
    count = frame[pos]
    pos += 1
    if not 1 <= count <= 254:
        _field_error(f"number_of_dests {count} outside 1..254", _S.ESME_RINVNUMDESTS, cid, seq)
    out: list[SmeAddress | DistributionList] = []
    for _ in range(count):
        flag = frame[pos]
        if flag == 1:
            ton, npi = frame[pos + 1], frame[pos + 2]
            pos += 3
            e = frame.find(0, pos, min(pos + 21, end))
            if e < 0:
                _cstr_error(
                    frame,
                    pos,
                    end,
                    Field("destination_addr", "cstr", 21, _S.ESME_RINVDSTADR),
                    cid,
                    seq,
                )
            out.append(SmeAddress(ton, npi, frame[pos:e].decode("latin-1")))
        elif flag == 2:
            pos += 1
            e = frame.find(0, pos, min(pos + 21, end))
            if e < 0:
                _cstr_error(
                    frame, pos, end, Field("dl_name", "cstr", 21, _S.ESME_RINVDLNAME), cid, seq
                )
            out.append(DistributionList(frame[pos:e].decode("latin-1")))
        else:
            _field_error(f"dest_flag {flag} is neither 1 nor 2", _S.ESME_RINVDESTFLAG, cid, seq)
        pos = e + 1
    return pos, tuple(out)


def _decode_unsuccess(
    frame: bytes, pos: int, end: int, cid: int, seq: int
) -> tuple[int, tuple[UnsuccessSme, ...]]:
    count = frame[pos]
    pos += 1
    out: list[UnsuccessSme] = []
    for _ in range(count):
        ton, npi = frame[pos], frame[pos + 1]
        pos += 2
        e = frame.find(0, pos, min(pos + 21, end))
        if e < 0:
            _cstr_error(
                frame, pos, end, Field("destination_addr", "cstr", 21, _S.ESME_RINVDSTADR), cid, seq
            )
        address = frame[pos:e].decode("latin-1")
        (code,) = _U32.unpack_from(frame, e + 1)
        pos = e + 5
        out.append(UnsuccessSme(ton, npi, address, code))
    return pos, tuple(out)


def _encode_cstr(value: str, f: Field) -> bytes:
    raw = value.encode("latin-1")
    if len(raw) >= f.size or b"\0" in raw:
        raise LocalProtocolError(
            f"{f.name}: {len(raw)} octets, at most {f.size - 1} allowed", status=f.status
        )
    return raw + b"\0"


def _encode_time(value: str, f: Field) -> bytes:
    if len(value) != 16 or "\0" in value:
        raise LocalProtocolError(
            f"{f.name}: a time is 16 characters or empty, got {len(value)}", status=f.status
        )
    return value.encode("latin-1")


def _encode_dests(dests: tuple[SmeAddress | DistributionList, ...], f: Field) -> bytes:
    if not 1 <= len(dests) <= 254:
        raise LocalProtocolError(
            f"number_of_dests {len(dests)} outside 1..254", status=_S.ESME_RINVNUMDESTS
        )
    parts = [bytes((len(dests),))]
    for d in dests:
        if isinstance(d, SmeAddress):
            parts.append(bytes((1, d.ton, d.npi)))
            parts.append(
                _encode_cstr(d.address, Field("destination_addr", "cstr", 21, _S.ESME_RINVDSTADR))
            )
        else:
            parts.append(b"\x02")
            parts.append(_encode_cstr(d.name, Field("dl_name", "cstr", 21, _S.ESME_RINVDLNAME)))
    return b"".join(parts)


def _encode_unsuccess(items: tuple[UnsuccessSme, ...], f: Field) -> bytes:
    if len(items) > 255:
        raise LocalProtocolError("no_unsuccess over 255", status=_S.ESME_RINVNUMDESTS)
    parts = [bytes((len(items),))]
    for u in items:
        parts.append(bytes((u.ton, u.npi)))
        parts.append(
            _encode_cstr(u.address, Field("destination_addr", "cstr", 21, _S.ESME_RINVDSTADR))
        )
        parts.append(_U32.pack(u.error_status_code))
    return b"".join(parts)


def _check_sm_payload(cls_name: str, sm: bytes, tlvs: tuple[Tlv, ...]) -> bool:
    """True when short_message and message_payload are both used (the spec forbids it)."""
    return bool(sm) and find_tlv(tlvs, Tag.MESSAGE_PAYLOAD) is not None


# --- code generation -------------------------------------------------------------------


def _gen_decoder(cls: type[Pdu], layout: tuple[Field, ...]) -> Callable[..., Pdu]:
    """Straight-line decoder: ``(frame, end, seq, status) -> Pdu`` for one PDU type."""
    has_tlvs = "tlvs" in cls.__struct_fields__
    env: dict[str, Any] = {
        "cls": cls,
        "cid": cls.command_id,
        "fields": layout,
        "_cstr_error": _cstr_error,
        "_field_error": _field_error,
        "_decode_dests": _decode_dests,
        "_decode_unsuccess": _decode_unsuccess,
        "decode_tlvs": decode_tlvs,
        "_check_sm_payload": _check_sm_payload,
        "S": _S,
    }
    lines = ["def decode(frame, end, seq, status):", "    pos = 16"]
    if cls in NO_BODY_ON_ERROR or cls.command_id & RESPONSE_BIT:
        lines.append("    if status and pos == end: return cls(seq, status)")
    names: list[str] = []
    i = 0
    while i < len(layout):
        f = layout[i]
        if f.kind == "u8":
            run = [f]
            while i + len(run) < len(layout) and layout[i + len(run)].kind == "u8":
                run.append(layout[i + len(run)])
            n = len(run)
            # One index per octet: cheaper than unpacking a slice (no bytes object).
            for k, r in enumerate(run):
                lines.append(
                    f"    v_{r.name} = frame[pos + {k}]" if k else f"    v_{r.name} = frame[pos]"
                )
            lines.append(f"    pos += {n}")
            names.extend(r.name for r in run)
            i += n
            continue
        if f.kind in ("cstr", "time"):
            # Empty strings are the common case (service_type, times): one octet test.
            lines += [
                "    if frame[pos]:",
                f"        e = frame.find(0, pos, pos + {f.size})",
                f"        if e < 0: _cstr_error(frame, pos, end, fields[{i}], cid, seq)",
                f"        v_{f.name} = frame[pos:e].decode('latin-1')",
                "        pos = e + 1",
                "    else:",
                f"        v_{f.name} = ''",
                "        pos += 1",
            ]
            if f.kind == "time":
                lines.append(
                    f"    if v_{f.name} and len(v_{f.name}) != 16: _field_error("
                    f"'{f.name}: a time is 16 characters or empty', {int(f.status)}, cid, seq)"
                )
        elif f.kind == "sm":
            lines += [
                "    n = frame[pos]",
                "    pos += 1",
                f"    if n > {f.size} or pos + n > end: _field_error("
                f"'sm_length ' + str(n) + ' does not fit the PDU', {int(f.status)}, cid, seq)",
                f"    v_{f.name} = frame[pos:pos + n]",
                "    pos += n",
            ]
        elif f.kind == "dests":
            lines.append(f"    pos, v_{f.name} = _decode_dests(frame, pos, end, cid, seq)")
        elif f.kind == "unsuccess":
            lines.append(f"    pos, v_{f.name} = _decode_unsuccess(frame, pos, end, cid, seq)")
        else:  # pragma: no cover - layouts are fixed at import
            raise RuntimeError(f"unknown field kind {f.kind}")
        names.append(f.name)
        i += 1
    # A short u8 run fails its unpacking (ValueError) and a lone octet its index
    # (IndexError); decode() maps both to ESME_RINVCMDLEN.
    args = ["seq", "status", *(f"v_{n}" for n in names)]
    if has_tlvs:
        lines += [
            "    if pos < end:",
            "        try:",
            "            tlvs = decode_tlvs(frame, pos, end)",
            "        except Exception as exc:",
            "            exc.command_id = cid",
            "            exc.sequence_number = seq",
            "            raise",
            "    else:",
            "        tlvs = ()",
        ]
        if "short_message" in names:
            lines.append(
                "    if tlvs and _check_sm_payload(cls.__name__, v_short_message, tlvs):"
                " _field_error('short_message and message_payload both used',"
                " S.ESME_RINVMSGLEN, cid, seq)"
            )
        args.append("tlvs")
    lines.append(f"    return cls({', '.join(args)})")
    exec("\n".join(lines), env)  # source built above from LAYOUTS only
    fn: Callable[..., Pdu] = env["decode"]
    return fn


def _gen_encoder(cls: type[Pdu], layout: tuple[Field, ...]) -> Callable[[Pdu], bytes]:
    """Straight-line encoder: ``(pdu) -> bytes`` including the header."""
    has_tlvs = "tlvs" in cls.__struct_fields__
    env: dict[str, Any] = {
        "cid": cls.command_id,
        "fields": layout,
        "_encode_cstr": _encode_cstr,
        "_encode_time": _encode_time,
        "_encode_dests": _encode_dests,
        "_encode_unsuccess": _encode_unsuccess,
        "encode_tlvs": encode_tlvs,
        "_check_sm_payload": _check_sm_payload,
        "pack": HEADER.pack,
        "LocalProtocolError": LocalProtocolError,
        "S": _S,
    }
    lines = ["def encode(p):"]
    if cls in NO_BODY_ON_ERROR:
        lines.append(
            "    if p.command_status: return pack(16, cid, p.command_status, p.sequence_number)"
        )
    fmt: list[str] = []  # one bytes %-format for the whole body: a single C call
    args: list[str] = []
    for i, f in enumerate(layout):
        if f.kind == "u8":
            fmt.append("%c")
            args.append(f"p.{f.name}")
        elif f.kind == "cstr":
            lines += [
                f"    s{i} = p.{f.name}.encode('latin-1')",
                f"    if len(s{i}) >= {f.size} or 0 in s{i}: _encode_cstr(p.{f.name}, fields[{i}])",
            ]
            fmt.append("%s\\x00")
            args.append(f"s{i}")
        elif f.kind == "time":
            lines += [
                f"    s{i} = p.{f.name}",
                f"    s{i} = _encode_time(s{i}, fields[{i}]) if s{i} else b''",
            ]
            fmt.append("%s\\x00")
            args.append(f"s{i}")
        elif f.kind == "sm":
            lines += [
                f"    sm = p.{f.name}",
                f"    if len(sm) > {f.size}: raise LocalProtocolError('short_message of '"
                f" + str(len(sm)) + ' octets exceeds {f.size}; use message_payload',"
                " status=S.ESME_RINVMSGLEN)",
            ]
            if has_tlvs:
                lines.append(
                    "    if p.tlvs and _check_sm_payload('', sm, p.tlvs): raise LocalProtocolError("
                    "'short_message and message_payload both used', status=S.ESME_RINVMSGLEN)"
                )
            fmt.append("%c%s")
            args += ["len(sm)", "sm"]
        elif f.kind == "dests":
            fmt.append("%s")
            args.append(f"_encode_dests(p.{f.name}, fields[{i}])")
        elif f.kind == "unsuccess":
            fmt.append("%s")
            args.append(f"_encode_unsuccess(p.{f.name}, fields[{i}])")
    if has_tlvs:
        fmt.append("%s")
        args.append("encode_tlvs(p.tlvs) if p.tlvs else b''")
    if fmt:
        lines.append(f"    body = b'{''.join(fmt)}' % ({', '.join(args)},)")
        lines.append(
            "    return pack(16 + len(body), cid, p.command_status, p.sequence_number) + body"
        )
    else:
        lines.append("    return pack(16, cid, p.command_status, p.sequence_number)")
    exec("\n".join(lines), env)  # source built above from LAYOUTS only
    fn: Callable[[Pdu], bytes] = env["encode"]
    return fn


_DECODERS: dict[int, Callable[..., Pdu]] = {
    cls.command_id: _gen_decoder(cls, layout) for cls, layout in LAYOUTS.items()
}
_ENCODERS: dict[type[Pdu], Callable[[Pdu], bytes]] = {
    cls: _gen_encoder(cls, layout) for cls, layout in LAYOUTS.items()
}


# --- public API ---------------------------------------------------------------------------


def encode(pdu: Pdu) -> bytes:
    """The wire bytes of ``pdu``, header included.

    Raises LocalProtocolError (carrying the status a peer would answer) when a field breaks
    the spec's limits: an over-long C-octet string, sm_length over 254, short_message together
    with message_payload, a time that is not 16 characters, a value out of its octet's range.
    """
    try:
        return _ENCODERS[type(pdu)](pdu)
    except LocalProtocolError:
        raise
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{type(pdu).__name__}: not a Latin-1 string: {exc}") from None
    except (ValueError, struct.error, OverflowError, TypeError) as exc:
        raise LocalProtocolError(f"{type(pdu).__name__}: {exc}") from None


def decode(frame: bytes) -> Pdu:
    """The PDU in ``frame``, which holds exactly one PDU with its header.

    Raises RemoteProtocolError with the status to answer and the command_id and
    sequence_number when they could be read.
    """
    end = len(frame)
    if end < HEADER_LENGTH:
        raise RemoteProtocolError(
            f"PDU of {end} octets is shorter than a header",
            status=_S.ESME_RINVCMDLEN,
            fatal=True,
        )
    length, cid, status, seq = HEADER.unpack_from(frame)
    if length != end:
        raise RemoteProtocolError(
            f"command_length {length} but {end} octets given",
            status=_S.ESME_RINVCMDLEN,
            command_id=cid,
            sequence_number=seq,
            fatal=True,
        )
    decoder = _DECODERS.get(cid)
    if decoder is None:
        raise RemoteProtocolError(
            f"unknown command_id 0x{cid:08X}",
            status=_S.ESME_RINVCMDID,
            command_id=cid,
            sequence_number=seq,
        )
    try:
        return decoder(frame, end, seq, status)
    except RemoteProtocolError:
        if status and cid & RESPONSE_BIT:
            # Lenient: an error response whose body we cannot read is still that error.
            return PDU_CLASSES[cid](seq, status)
        raise
    except (IndexError, ValueError, struct.error) as exc:
        if status and cid & RESPONSE_BIT:
            return PDU_CLASSES[cid](seq, status)
        raise RemoteProtocolError(
            f"{PDU_CLASSES[cid].__name__}: body shorter than its fields ({exc})",
            status=_S.ESME_RINVCMDLEN,
            command_id=cid,
            sequence_number=seq,
        ) from None


class FrameBuffer:
    """Cuts a byte stream into whole PDUs, reading each command_length first.

    A command_length under 16 or over ``max_length`` is refused before any of the PDU is
    buffered: :attr:`error` is set (fatal, ESME_RINVCMDLEN, with the sequence number when the
    header's 16 octets were at hand) and the buffer takes nothing more.
    """

    __slots__ = ("_buf", "error", "max_length")

    def __init__(self, max_length: int = DEFAULT_MAX_PDU_LENGTH) -> None:
        if max_length < HEADER_LENGTH:
            raise ValueError("max_length must be at least 16")
        self.max_length = max_length
        self._buf = bytearray()
        self.error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Octets held for a PDU not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every PDU it completes, in order."""
        if self.error is not None:
            return []
        frames: list[bytes] = []
        unpack = _U32.unpack_from
        max_length = self.max_length
        if type(data) is not bytes:
            data = bytes(data)  # frames are bytes whatever the caller feeds
        src = data
        pos = 0
        buf = self._buf
        if buf:
            # Complete the PDU begun in an earlier read, then go on in ``data`` itself:
            # appending all of ``data`` to the buffer would copy every PDU twice.
            if len(buf) < 4:
                pos = min(4 - len(buf), len(data))
                buf += data[:pos]
                if len(buf) < 4:
                    return frames
            (length,) = unpack(buf, 0)
            if HEADER_LENGTH <= length <= max_length:
                take = length - len(buf)
                if pos + take > len(data):
                    buf += data[pos:]
                    return frames
                buf += data[pos : pos + take]
                frames.append(bytes(buf))
                self._buf = bytearray()
                pos += take
            else:  # refused below, with what the buffer holds
                src = bytes(buf) + data[pos:]
                pos = 0
                self._buf = buf = bytearray()
        size = len(src)
        while size - pos >= 4:
            (length,) = unpack(src, pos)
            if length < HEADER_LENGTH or length > max_length:
                seq = 0
                cid = 0
                if size - pos >= HEADER_LENGTH:
                    _, cid, _, seq = HEADER.unpack_from(src, pos)
                self.error = RemoteProtocolError(
                    f"command_length {length} outside 16..{max_length}",
                    status=_S.ESME_RINVCMDLEN,
                    command_id=cid,
                    sequence_number=seq,
                    fatal=True,
                )
                self._buf = bytearray()
                return frames
            if size - pos < length:
                break
            frames.append(src[pos : pos + length])
            pos += length
        if pos < size:
            self._buf += src[pos:]
        return frames
