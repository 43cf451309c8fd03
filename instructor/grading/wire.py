"""The message format between the grader and a submission's sandboxed process: JSON plus raw tensor bytes.

Nothing here unpickles or evaluates: a message is a header line ``b"<json bytes> <data bytes>\\n"``, then the JSON
(plain values; tuples, dicts and tensors tagged), then the tensors' bytes, read with ``torch.frombuffer``. Sizes,
dtypes and nesting are bounded, so a hostile process can make a message fail to decode, never make the grader run
code or allocate without bound. Copied into each sandbox as ``_wire.py`` (the child imports it from there).
"""

from __future__ import annotations

import json
import math
import os

import torch

MAX_JSON = 1 << 20
MAX_DATA = 64 << 20
MAX_DEPTH = 8
MAX_DIMS = 8
DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}
DEVICES = ("cpu", "meta")


class WireError(ValueError):
    """A message that is not in this format (or too large)."""


class Unencodable:
    """Stands for a value the child could not send (e.g. a generator a student returned): its type name."""

    def __init__(self, type_name):
        self.type_name = type_name

    def __repr__(self):
        return f"<{self.type_name}>"


def encode(value):
    """bytes of one message holding ``value`` (None, bool, int, float, str, list, tuple, dict with str keys,
    tensors on the CPU or the meta device; anything else is sent as its type name)."""
    tensors, chunks = [], []

    def enc(v, depth):
        if depth > MAX_DEPTH:
            return {"__u": "nested too deep"}
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return v if abs(v) < 2**62 else {"__u": "huge int"}
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__f": repr(v)}
        if isinstance(v, torch.Tensor):
            return {"__x": _enc_tensor(v, tensors, chunks)}
        if isinstance(v, tuple):
            return {"__t": [enc(x, depth + 1) for x in v]}
        if isinstance(v, list):
            return [enc(x, depth + 1) for x in v]
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {"__d": [[k, enc(x, depth + 1)] for k, x in v.items()]}
        return {"__u": type(v).__name__}

    head = json.dumps({"v": enc(value, 0), "t": tensors}).encode()
    data = b"".join(chunks)
    return b"%d %d\n" % (len(head), len(data)) + head + data


def _enc_tensor(t, tensors, chunks):
    t = t.detach()
    if type(t) is not torch.Tensor:  # a subclass: send its data only
        t = t.as_subclass(torch.Tensor)
    dtype = str(t.dtype).removeprefix("torch.")
    device = t.device.type
    if dtype not in DTYPES or device not in DEVICES or t.dim() > MAX_DIMS:
        tensors.append({"bad": f"{dtype} tensor on {device} with {t.dim()} dims"})
        return len(tensors) - 1
    raw = b"" if device == "meta" else t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    tensors.append({"dtype": dtype, "shape": list(t.shape), "device": device, "n": len(raw)})
    chunks.append(raw)
    return len(tensors) - 1


def decode(head, data):
    """The value of one message (its JSON ``head`` and ``data`` bytes). Raises WireError."""
    try:
        msg = json.loads(head)
        specs, encoded = msg["t"], msg["v"]
    except RecursionError:  # JSON nested 200,000 deep: json's own recursion limit stops it
        raise WireError("malformed message (nested too deep)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise WireError(f"malformed message ({str(e)[:200]})") from None
    if not isinstance(specs, list):
        raise WireError("malformed tensor list")
    tensors, offset = [], 0
    for s in specs:
        t, offset = _dec_tensor(s, data, offset)
        tensors.append(t)

    def dec(v, depth):
        if depth > MAX_DEPTH + 1:
            raise WireError("nested too deep")
        if isinstance(v, list):
            return [dec(x, depth + 1) for x in v]
        if not isinstance(v, dict):
            return v
        if "__x" in v:
            i = v["__x"]
            if not isinstance(i, int) or not 0 <= i < len(tensors):
                raise WireError("bad tensor index")
            return tensors[i]
        if "__t" in v:
            return tuple(dec(x, depth + 1) for x in v["__t"])
        if "__d" in v:
            return {str(k)[:200]: dec(x, depth + 1) for k, x in v["__d"]}
        if "__f" in v:
            return float(v["__f"])
        if "__u" in v:
            return Unencodable(str(v["__u"])[:80])
        raise WireError("unknown tag")

    try:
        return dec(encoded, 0)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as e:
        raise WireError(f"malformed message ({type(e).__name__}: {str(e)[:200]})") from None


def _dec_tensor(s, data, offset):
    if not isinstance(s, dict):
        raise WireError("malformed tensor")
    if "bad" in s:
        return Unencodable(str(s["bad"])[:80]), offset
    dtype, shape, device, n = s.get("dtype"), s.get("shape"), s.get("device"), s.get("n")
    if (
        dtype not in DTYPES
        or device not in DEVICES
        or not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and 0 <= d < 2**31 for d in shape)
        or not isinstance(n, int)
    ):
        raise WireError("malformed tensor header")
    numel = math.prod(shape)
    if device == "meta":
        if n != 0 or numel > 2**40:
            raise WireError("malformed meta tensor")
        return torch.empty(shape, dtype=DTYPES[dtype], device="meta"), offset
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    if n != numel * itemsize or offset + n > len(data):
        raise WireError("tensor size does not match its data")
    raw = bytearray(data[offset : offset + n])
    t = torch.frombuffer(raw, dtype=DTYPES[dtype]) if n else torch.empty(0, dtype=DTYPES[dtype])
    return t.reshape(shape), offset + n


# ------------------------------------------------------------------------------------------------- file descriptors
def write_message(fd, value):
    """Write one message to the blocking file descriptor ``fd``."""
    buf = memoryview(encode(value))
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


class Reader:
    """Splits the bytes read from a pipe into messages (``feed`` returns the complete ones, decoded)."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            nl = self.buf.find(b"\n", 0, 64)
            if nl < 0:
                if len(self.buf) >= 64:
                    raise WireError("no message header")
                return out
            try:
                nh, nd = (int(x) for x in bytes(self.buf[:nl]).split(b" "))
            except ValueError:
                raise WireError("malformed message header") from None
            if not (0 <= nh <= MAX_JSON and 0 <= nd <= MAX_DATA):
                raise WireError("message too large")
            end = nl + 1 + nh + nd
            if len(self.buf) < end:
                return out
            head = bytes(self.buf[nl + 1 : nl + 1 + nh])
            data = bytes(self.buf[nl + 1 + nh : end])
            del self.buf[:end]
            out.append(decode(head, data))
