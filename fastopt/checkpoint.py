"""Save and load optimizer state (and optionally the parameters) as safetensors files.

    fastopt.save(opt, "opt.safetensors")               # state, steps, hyperparameters
    fastopt.save(opt, "run.safetensors", params=True)  # ... and the parameters
    fastopt.load(opt, "run.safetensors")               # checked, then restored in place

No pickle anywhere: the file is a plain `safetensors <https://github.com/huggingface/
safetensors>`_ file (an 8-byte little-endian header length, a JSON header, raw tensor
bytes), readable by any safetensors reader. safetensors is an optional dependency
(``pip install fastopt[checkpoint]``), imported only when ``save``/``load`` run.

**Format, version 1.** Tensors:

* ``state/{index}/{name}``: every state buffer (``exp_avg``, ``momentum_buffer``, ...) of
  parameter ``index``, in the parameter's shape and dtype. A ``step`` that the optimizer
  keeps as a tensor (``torch.optim``'s layout) is stored too, as ``state/{index}/step``.
* ``params/{index}``: the parameters, with ``save(..., params=True)``.

Metadata (string -> string): ``format`` (``"fastopt.checkpoint"``), ``format_version``
(``"1"``), ``rule`` (the optimizer's class name), ``fastopt_version``, ``param_groups``
(JSON: the groups' hyperparameters and ``"params"`` index lists, as ``state_dict()``
gives them; a :mod:`fastopt.schedules` ``lr`` as ``{"schedule": class name, "fields":
{...}}``, see :func:`fastopt.schedules.to_data`), ``steps`` (JSON: index -> step count),
``state_values`` (JSON: state entries that are neither arrays nor steps, usually ``{}``;
scalars only: arrays come only from tensors), ``loop_options`` (JSON: the optimizer's
``clip_grad_norm``, ``grad_scale`` and ``skip_if_nonfinite``, those it has; absent in
files of fastopt 0.1.0, whose loads leave the options as they are), ``params``
(``"true"``/``"false"``) and ``checksum``: ``"sha256:"`` and the SHA-256 of the whole file
with this value replaced by ``"sha256:"`` and 64 zeros. The checksum makes every truncation
and every flipped byte, in the header or in the data, a ``ValueError`` instead of a
silently different state.

Works with any optimizer exposing ``torch.optim``-style ``state_dict()`` /
``load_state_dict()`` (fastopt's own classes, :mod:`fastopt.torch`'s); torch tensors are
converted with ``.detach().cpu().numpy()``, and back to tensors on load.
"""

import errno
import hashlib
import json
import math
import numbers
import os
import re
import secrets
import stat

import numpy as np

from . import schedules
from .flat import as_numpy, is_half
from .incoming import plain_value, step_count
from .optim.loop import check_loop_options

try:
    import fcntl
except ImportError:  # not POSIX: stale temporaries are not detected (see _atomic_write)
    fcntl = None

FORMAT = "fastopt.checkpoint"
FORMAT_VERSION = "1"
_KNOWN_VERSIONS = {"1"}
_PLACEHOLDER = "sha256:" + "0" * 64
_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")
_INDEX = re.compile(r"0|[1-9][0-9]*")
_STATE_NAME = re.compile(r"state/(0|[1-9][0-9]*)/([^/]+)")
_PARAM_NAME = re.compile(r"params/(0|[1-9][0-9]*)")
_TEMP_SUFFIX = ".fastopt-tmp"
#: safetensors' own limit on the JSON header (100 MB); fastopt's headers are kilobytes.
_MAX_HEADER = 100_000_000
#: Bytes per element of the safetensors dtypes a header may declare.
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
             "F64": 8}
#: The training-loop options a checkpoint stores (where the optimizer has them).
LOOP_OPTIONS = ("clip_grad_norm", "grad_scale", "skip_if_nonfinite")

__all__ = ["save", "load", "FORMAT_VERSION"]


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError as error:
        raise ImportError("fastopt.save/fastopt.load need safetensors: "
                          "pip install fastopt[checkpoint]") from error
    return safetensors.numpy


def _is_torch(optimizer):
    return any(hasattr(p, "detach") for g in optimizer.param_groups for p in g["params"])


def _json_default(value):
    """JSON for NumPy scalars, one-element arrays/tensors (torch allows a tensor lr) and
    :mod:`fastopt.schedules` schedules (as data: :func:`fastopt.schedules.to_data`)."""
    if callable(value) and not hasattr(value, "detach"):
        return schedules.to_data(value)
    value = as_numpy(value)
    if isinstance(value, (np.generic, np.ndarray)) and value.size == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in a checkpoint "
                    "(hyperparameters must be numbers, bools, strings, None or lists)")


def _dumps(value, what):
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as error:
        raise TypeError(f"fastopt.save: {what}: {error}") from None


# --- save ----------------------------------------------------------------------------


def save(optimizer, path, *, params=False):
    """Write ``optimizer``'s state to ``path`` as a safetensors file, atomically.

    Stores every state buffer, the step counts, the hyperparameters of every param group
    and the rule (the optimizer's class name); with ``params=True`` also the parameters,
    which :func:`load` then restores in place. No pickle: see the module docstring for the
    format.

    Also stores a :mod:`fastopt.schedules` ``lr`` (as data: its class name and fields)
    and the loop options ``clip_grad_norm``, ``grad_scale`` and ``skip_if_nonfinite``;
    any other callable ``lr`` is a ``TypeError``.

    The file is written to a temporary file in the same folder, flushed, ``fsync``-ed and
    renamed over ``path`` (``os.replace``), then the folder is ``fsync``-ed: a crash at any
    point leaves either the old file or the new one, never a mix. On any error the
    temporary file is removed and an existing ``path`` is left as it was. A new file gets
    mode 0644; an existing file keeps its mode. A symlink at ``path`` is followed: the file
    it points to is replaced and the link stays. A ``path`` that exists and is not a
    regular file (a folder, ``/dev/null``, a FIFO, a socket) is refused with
    ``ValueError`` before anything is written. The temporary file is named
    ``.{name}.{16 hex digits}.fastopt-tmp`` and locked (``flock``) while it is written; a
    save to ``path`` first removes such files that no process holds locked, left behind
    by a save that was killed (POSIX only: elsewhere they stay).
    """
    st_numpy = _safetensors_numpy()
    from . import __version__

    target, mode = _target(path)
    state_dict = optimizer.state_dict()
    groups = state_dict["param_groups"]
    tensors, steps, values = {}, {}, {}
    held = getattr(getattr(optimizer, "rule", None), "scalar_state_names", ())
    for index, entry in state_dict["state"].items():
        key = _index_key(index)
        for name, value in entry.items():
            if not isinstance(name, str) or "/" in name or not name:
                raise TypeError(f"fastopt.save: state[{index}] has key {name!r}; state "
                                "names must be non-empty strings without '/'")
            array = as_numpy(value)
            if name == "step":
                steps[key] = step_count(value, f"fastopt.save: state[{index}]['step']", 0)
                if isinstance(array, np.ndarray):  # torch's 0-d tensor: keep its dtype
                    tensors[f"state/{key}/step"] = _contiguous(array)
            elif isinstance(array, np.ndarray) and name not in held:
                if array.dtype.name == "bfloat16":   # low-precision state: widened
                    array = array.astype(np.float32)  # (exact; safetensors' NumPy side
                tensors[f"state/{key}/{name}"] = _contiguous(array)   # reads no bf16)
            else:   # a number, or the rule's scalar state (NAdam's mu_product): JSON
                values.setdefault(key, {})[name] = (
                    array.item() if isinstance(array, np.ndarray) else value)
    if params:
        live = [p for group in optimizer.param_groups for p in group["params"]]
        ids = [i for group in groups for i in group["params"]]
        for index, param in zip(ids, live):
            tensors[f"params/{_index_key(index)}"] = _contiguous(_param_array(param))
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rule": type(optimizer).__name__,
        "fastopt_version": __version__,
        "param_groups": _dumps(groups, "param_groups"),
        "steps": _dumps(steps, "step counts"),
        "state_values": _dumps(values, "state values"),
        "loop_options": _dumps(_loop_options(optimizer), "loop options"),
        "params": "true" if params else "false",
        "checksum": _PLACEHOLDER,
    }
    blob = memoryview(st_numpy.save(tensors, metadata=metadata))
    start, stop = _checksum_span(blob, _PLACEHOLDER)
    if start is None:
        raise RuntimeError("fastopt.save: could not place the checksum in the header")
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _atomic_write(target, mode, [blob[:start], digest.encode("ascii"), blob[stop:]])


def _loop_options(optimizer):
    """The loop options the optimizer has, as JSON numbers and bools."""
    options = {}
    for name in LOOP_OPTIONS:
        if hasattr(optimizer, name):
            options[name] = plain_value(getattr(optimizer, name), name)
    return options


def _target(path):
    """``(file to write, mode to give it)``: ``path`` with symlinks followed; the mode of
    the existing file, or 0644. Refuses an existing target that is not a regular file."""
    target = os.path.realpath(os.fspath(path))
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return target, 0o644
    if not stat.S_ISREG(info.st_mode):
        how = "points to" if os.path.islink(path) else "is"
        raise ValueError(f"fastopt.save: path {os.fspath(path)!r} {how} "
                         f"{_kind(info.st_mode)}, not a regular file; refusing to replace it")
    return target, stat.S_IMODE(info.st_mode)


def _kind(mode):
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "a special file")


def _contiguous(array):
    """``array`` if C-contiguous, else a C-contiguous copy (keeps 0-d arrays 0-d, which
    ``np.ascontiguousarray`` does not)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def _index_key(index):
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or index < 0:
        raise TypeError(f"fastopt.save: state_dict uses key {index!r}; expected "
                        "parameter indices (non-negative ints)")
    return str(int(index))


def _checksum_span(data, value):
    """The byte span of the checksum string ``value`` inside the JSON header, if it
    occurs there exactly once (quoted); else ``(None, None)``."""
    length = int.from_bytes(bytes(data[:8]), "little")
    header = bytes(data[8:8 + length])
    needle = b'"' + value.encode("ascii") + b'"'
    at = header.find(needle)
    if at < 0 or header.find(needle, at + 1) >= 0:
        return None, None
    start = 8 + at + 1
    return start, start + len(value)


def _atomic_write(target, mode, chunks):
    """Write ``chunks`` to a locked temporary file next to ``target``, fsync, rename it
    over ``target``, fsync the folder (see :func:`save`)."""
    folder, name = os.path.split(target)
    _remove_stale_temporaries(folder, name)
    fd, tmp = _create_temporary(folder, name)
    try:
        with os.fdopen(fd, "wb") as file:   # closing it releases the lock
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(folder)


def _temporary_pattern(name):
    return re.compile(re.escape(f".{name}.") + "[0-9a-f]{16}" + re.escape(_TEMP_SUFFIX))


def _create_temporary(folder, name):
    """``(fd, path)`` of a new temporary file for ``name``, locked while this process
    writes it, so that :func:`_remove_stale_temporaries` leaves it alone."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}{_TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:   # not removed as stale before the lock was taken
            return fd, tmp
        os.close(fd)


def _remove_stale_temporaries(folder, name):
    """Remove the temporaries of saves to ``name`` that no process holds locked: those a
    killed save left behind. A save in progress holds its lock, so its file stays."""
    if fcntl is None:
        return
    pattern = _temporary_pattern(name)
    for entry in os.scandir(folder):
        if not pattern.fullmatch(entry.name):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue   # a save in progress
            current = os.lstat(entry.path)
            if (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino):
                os.unlink(entry.path)
        except FileNotFoundError:
            pass           # renamed into place by a save that just finished
        finally:
            os.close(fd)


def _fsync_directory(folder):
    """Make the rename durable (POSIX); filesystems that cannot fsync a folder skip it."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


# --- load ----------------------------------------------------------------------------


def load(optimizer, path):
    """Restore ``optimizer``'s state (and, if the file holds them, its parameters, in
    place) from a file written by :func:`save`.

    The whole file is read and checked before anything is written: its size against the
    header's declared sizes (before the data is read, so a huge bogus file is a
    ``ValueError``, not a ``MemoryError``), its checksum, format version, rule (the
    optimizer's class name), number of param groups and of params per group, every
    buffer's name, shape and dtype against the optimizer's parameters, schedules and loop
    options. The state dict built from it goes through ``optimizer.load_state_dict``
    (which checks every value again before writing); the loop options and the parameters
    are written only after that succeeded. ``path`` must be a regular file (a symlink to
    one is followed).

    Raises ``ValueError`` saying what differs (``"checkpoint ... is for Adam, optimizer
    is SGD"``), or ``"corrupt or truncated checkpoint ..."`` for a damaged file; the
    optimizer and the parameters are then unchanged.
    """
    st_numpy = _safetensors_numpy()
    path = os.fspath(path)
    data, metadata = _read_file(path)
    tensors = _verified_tensors(st_numpy, data, metadata, path)
    state_dict, new_params, options = _build(optimizer, tensors, metadata, path)
    try:
        optimizer.load_state_dict(state_dict)
    except TypeError as error:  # a hyperparameter of the wrong type: still a bad file
        raise ValueError(f"checkpoint {path} does not fit the optimizer: {error}") \
            from error
    for name, value in options.items():
        setattr(optimizer, name, value)
    for param, array in new_params:
        _write_param(param, array)


def _corrupt(path, why):
    return ValueError(f"corrupt or truncated checkpoint {path}: {why}")


def _read_file(path):
    """``(whole file, metadata)``; the header is read and checked against the file's size
    before the data is read."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"checkpoint {path} is {_kind(info.st_mode)}, not a regular file")
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        prefix = file.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, f"{len(prefix)} bytes, fewer than the 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise _corrupt(path, f"header length {length} exceeds the {size - 8} bytes "
                                 "that follow it")
        if length > _MAX_HEADER:
            raise _corrupt(path, f"header length {length} exceeds safetensors' limit "
                                 f"of {_MAX_HEADER} bytes")
        header_bytes = file.read(length)
        try:
            header = json.loads(header_bytes.decode("utf-8"))
        except (ValueError, RecursionError):
            raise _corrupt(path, "the header is not valid JSON") from None
        metadata = _metadata(header, path)
        declared = _declared_size(header, path)
        if 8 + length + declared != size:
            raise _corrupt(path, f"the header declares {declared} bytes of tensor data, "
                                 f"the file holds {size - 8 - length}")
        data = file.read(declared + 1)
    if len(header_bytes) != length or len(data) != declared:
        raise _corrupt(path, "the file changed size while it was read")
    return prefix + header_bytes + data, metadata


def _metadata(header, path):
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise _corrupt(path, f"no {FORMAT!r} metadata in the header (damaged, or not a "
                             "file written by fastopt.save)")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _corrupt(path, "metadata values must be strings")
    version = metadata.get("format_version")
    if version not in _KNOWN_VERSIONS:
        raise ValueError(f"checkpoint {path} has format version {version!r}; this fastopt "
                         f"reads version(s) {sorted(_KNOWN_VERSIONS)} (a newer fastopt "
                         "wrote it?)")
    return metadata


def _declared_size(header, path):
    """The bytes of tensor data the header declares (the largest end offset), after
    checking each entry's offsets against its dtype and shape."""
    end = 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        spec = spec if isinstance(spec, dict) else {}
        dtype, shape = spec.get("dtype"), spec.get("shape")
        offsets = spec.get("data_offsets")
        if (dtype not in _ITEMSIZE or not isinstance(shape, list)
                or not all(type(d) is int and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _corrupt(path, f"tensor {name!r} has a malformed header entry")
        if offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[dtype]:
            raise _corrupt(path, f"tensor {name!r} declares {offsets[1] - offsets[0]} bytes "
                                 f"for {dtype} of shape {shape}")
        end = max(end, offsets[1])
    return end


def _verified_tensors(st_numpy, data, metadata, path):
    checksum = metadata.get("checksum", "")
    if not _CHECKSUM.fullmatch(checksum):
        raise _corrupt(path, "missing or malformed checksum")
    start, stop = _checksum_span(data, checksum)
    if start is None:
        raise _corrupt(path, "checksum not found once in the header")
    digest = hashlib.sha256()
    view = memoryview(data)
    digest.update(view[:start])
    digest.update(_PLACEHOLDER.encode("ascii"))
    digest.update(view[stop:])
    if "sha256:" + digest.hexdigest() != checksum:
        raise _corrupt(path, "checksum mismatch (the file was truncated or modified)")
    try:
        return st_numpy.load(data)
    except Exception as error:  # safetensors raises its own error types
        raise _corrupt(path, f"safetensors could not read it ({error})") from None


def _json_field(metadata, key, kind, path):
    try:
        value = json.loads(metadata[key])
    except (KeyError, ValueError, RecursionError):
        raise _corrupt(path, f"metadata {key!r} missing or not JSON") from None
    if not isinstance(value, kind):
        raise _corrupt(path, f"metadata {key!r} is not a {kind.__name__}")
    return value


def _build(optimizer, tensors, metadata, path):
    """The state dict to load and the ``(param, array)`` pairs to write, after checking
    the file against the optimizer (raises ``ValueError`` saying what differs)."""
    rule, name = metadata.get("rule"), type(optimizer).__name__
    if rule != name:
        raise ValueError(f"checkpoint {path} is for {rule}, optimizer is {name}")
    groups = _json_field(metadata, "param_groups", list, path)
    steps = _json_field(metadata, "steps", dict, path)
    values = _json_field(metadata, "state_values", dict, path)
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"checkpoint {path} has {len(groups)} param groups, the optimizer "
                         f"has {len(optimizer.param_groups)}")
    ids, live, live_groups = [], [], []
    for g, (saved, group) in enumerate(zip(groups, optimizer.param_groups)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list) \
                or not all(type(i) is int for i in saved["params"]):
            raise _corrupt(path, f"param group {g} is malformed")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(f"checkpoint {path} param group {g} has "
                             f"{len(saved['params'])} params, the optimizer's has "
                             f"{len(group['params'])}")
        ids.extend(saved["params"])
        live.extend(group["params"])
        live_groups.extend([group] * len(group["params"]))
    position = {index: i for i, index in enumerate(ids)}
    if len(position) != len(ids):
        raise _corrupt(path, "a parameter index appears in two param groups")
    arrays = [_param_array(p) for p in live]

    def param_for(index, what):
        if index not in position:
            raise ValueError(f"checkpoint {path} has {what} for parameter {index}, but the "
                             f"optimizer has {len(ids)} params")
        return position[index]

    rule_of = getattr(optimizer, "rule", None)

    def check(array, what, i, key=None):
        """A state array of ``key`` has the shape of the rule's ``state_shape`` (the
        param's unless the rule says otherwise) and the param's dtype."""
        want = arrays[i]
        if key is not None and rule_of is not None and rule_of.shaped_state:
            shape = rule_of.state_shape(key, live_groups[i], tuple(want.shape))
            if shape is None:
                raise ValueError(f"checkpoint {path}: {what}: params[{i}] of shape "
                                 f"{want.shape} has no {key!r} state (another rule?)")
            if array.shape != tuple(shape) or array.dtype != want.dtype:
                raise ValueError(f"checkpoint {path}: {what} has shape {array.shape} and "
                                 f"dtype {array.dtype}, the {key!r} state of params[{i}] "
                                 f"(shape {want.shape}) has shape {tuple(shape)} and dtype "
                                 f"{want.dtype}")
            return
        if array.shape != want.shape or array.dtype != want.dtype:
            raise ValueError(f"checkpoint {path}: {what} has shape {array.shape} and dtype "
                             f"{array.dtype}, params[{i}] has shape {want.shape} and dtype "
                             f"{want.dtype}")

    torch_mode = _is_torch(optimizer)
    to_value = _to_torch if torch_mode else np.array
    state, new_params = {}, []
    for tensor_name in sorted(tensors):
        array = tensors[tensor_name]
        match = _STATE_NAME.fullmatch(tensor_name)
        if match:
            index, key = int(match[1]), match[2]
            i = param_for(index, f"state {key!r}")
            if key == "step":
                if array.size != 1 or array.item() != steps.get(str(index)):
                    raise _corrupt(path, f"state/{index}/step disagrees with 'steps'")
            else:
                check(array, f"state[{index}][{key!r}]", i, key)
            state.setdefault(index, {})[key] = to_value(array)
            continue
        match = _PARAM_NAME.fullmatch(tensor_name)
        if match and metadata.get("params") == "true":
            index = int(match[1])
            i = param_for(index, "a parameter")
            check(array, f"params/{index}", i)
            if not torch_mode and not arrays[i].flags.writeable:
                raise ValueError(f"params[{i}] is read-only; load cannot restore it")
            new_params.append((live[i], array))
            continue
        raise _corrupt(path, f"unexpected tensor {tensor_name!r}")
    if metadata.get("params") == "true" and len(new_params) != len(live):
        raise _corrupt(path, f"holds {len(new_params)} of {len(live)} parameters")
    for key, step in steps.items():
        if not _INDEX.fullmatch(key):
            raise _corrupt(path, f"bad step count key {key!r}")
        step = step_count(step, f"checkpoint {path}: the step count of parameter {key}", 0)
        index = int(key)
        param_for(index, "a step count")
        entry = state.setdefault(index, {})
        if "step" not in entry:
            entry["step"] = _to_torch(np.array(step, np.float32)) if torch_mode else step
    for key, entry_values in values.items():
        if not _INDEX.fullmatch(key) or not isinstance(entry_values, dict):
            raise _corrupt(path, f"bad state values for {key!r}")
        param_for(int(key), "state values")
        entry = state.setdefault(int(key), {})
        for value_name, value in entry_values.items():
            if value_name in entry or value_name == "step" or isinstance(value, (list, dict)):
                raise _corrupt(path, f"state_values[{key!r}][{value_name!r}] is "
                                     f"{type(value).__name__}: arrays come only from "
                                     "tensors and steps only from 'steps'")
            entry[value_name] = value
    for g, (saved, group) in enumerate(zip(groups, optimizer.param_groups)):
        for key, value in saved.items():
            if isinstance(value, dict):  # a schedule, stored as data
                try:
                    saved[key] = schedules.from_data(value)
                except ValueError as error:
                    raise ValueError(f"checkpoint {path}: param group {g} {key!r}: "
                                     f"{error}") from None
            elif isinstance(value, list) and isinstance(group.get(key), tuple):
                saved[key] = tuple(value)  # JSON has no tuples: betas come back as tuples
    return ({"state": state, "param_groups": groups}, new_params,
            _stored_loop_options(optimizer, metadata, path))


def _stored_loop_options(optimizer, metadata, path):
    """The loop options to set after the state loaded (checked now); ``{}`` for a file
    that has none (fastopt 0.1.0)."""
    if "loop_options" not in metadata:
        return {}
    stored = _json_field(metadata, "loop_options", dict, path)
    unknown = sorted(set(stored) - set(LOOP_OPTIONS))
    if unknown:
        raise _corrupt(path, f"unknown loop options {unknown}")
    options = {name: plain_value(value, name) for name, value in stored.items()}
    if not all(hasattr(optimizer, name) for name in LOOP_OPTIONS):
        defaults = {"clip_grad_norm": None, "grad_scale": 1.0, "skip_if_nonfinite": False}
        if any(value != defaults[name] for name, value in options.items()):
            raise ValueError(f"checkpoint {path} has loop options {options}, which "
                             f"{type(optimizer).__name__} does not have")
        return {}
    try:
        check_loop_options(**{**{name: getattr(optimizer, name) for name in LOOP_OPTIONS},
                              **options})
    except TypeError as error:
        raise ValueError(f"checkpoint {path}: {error}") from None
    return options


def _to_torch(array):
    import torch

    return torch.from_numpy(np.array(array))  # a writable copy


def _param_array(param):
    """A param as NumPy: a view, except that a bfloat16/float16 param (torch tensor or
    NumPy array) is widened to float32 (exactly). Its master and state are float32 too (``fastopt.torch``), and
    safetensors' NumPy side reads no bfloat16; ``_write_param`` rounds it back."""
    if hasattr(param, "detach") and param.is_floating_point() and param.element_size() == 2:
        return param.detach().float().numpy()
    if isinstance(param, np.ndarray) and is_half(param.dtype):   # ml_dtypes bf16, fp16
        return param.astype(np.float32)
    return as_numpy(param)


def _write_param(param, array):
    if hasattr(param, "detach"):
        import torch

        with torch.no_grad():
            param.copy_(torch.from_numpy(np.array(array)))
    else:
        param[...] = array
