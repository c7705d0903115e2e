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
gives them), ``steps`` (JSON: index -> step count), ``state_values`` (JSON: state entries
that are neither arrays nor steps, usually ``{}``), ``params`` (``"true"``/``"false"``)
and ``checksum``: ``"sha256:"`` and the SHA-256 of the whole file with this value replaced
by ``"sha256:"`` and 64 zeros. The checksum makes every truncation and every flipped byte,
in the header or in the data, a ``ValueError`` instead of a silently different state.

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
import stat
import tempfile

import numpy as np

from .flat import as_numpy

FORMAT = "fastopt.checkpoint"
FORMAT_VERSION = "1"
_KNOWN_VERSIONS = {"1"}
_PLACEHOLDER = "sha256:" + "0" * 64
_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")
_INDEX = re.compile(r"0|[1-9][0-9]*")
_STATE_NAME = re.compile(r"state/(0|[1-9][0-9]*)/([^/]+)")
_PARAM_NAME = re.compile(r"params/(0|[1-9][0-9]*)")

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
    """JSON for NumPy scalars and one-element arrays/tensors (torch allows a tensor lr)."""
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

    The file is written to a temporary file in the same folder, flushed, ``fsync``-ed and
    renamed over ``path`` (``os.replace``), then the folder is ``fsync``-ed: a crash at any
    point leaves either the old file or the new one, never a mix. On any error the
    temporary file is removed and an existing ``path`` is left as it was. A new file gets
    mode 0644; an existing file keeps its mode.
    """
    st_numpy = _safetensors_numpy()
    from . import __version__

    state_dict = optimizer.state_dict()
    groups = state_dict["param_groups"]
    tensors, steps, values = {}, {}, {}
    for index, entry in state_dict["state"].items():
        key = _index_key(index)
        for name, value in entry.items():
            if not isinstance(name, str) or "/" in name or not name:
                raise TypeError(f"fastopt.save: state[{index}] has key {name!r}; state "
                                "names must be non-empty strings without '/'")
            array = as_numpy(value)
            if name == "step":
                steps[key] = _step_number(array, index)
                if isinstance(array, np.ndarray):  # torch's 0-d tensor: keep its dtype
                    tensors[f"state/{key}/step"] = _contiguous(array)
            elif isinstance(array, np.ndarray):
                tensors[f"state/{key}/{name}"] = _contiguous(array)
            else:
                values.setdefault(key, {})[name] = value
    if params:
        live = [p for group in optimizer.param_groups for p in group["params"]]
        ids = [i for group in groups for i in group["params"]]
        for index, param in zip(ids, live):
            tensors[f"params/{_index_key(index)}"] = _contiguous(as_numpy(param))
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rule": type(optimizer).__name__,
        "fastopt_version": __version__,
        "param_groups": _dumps(groups, "param_groups"),
        "steps": _dumps(steps, "step counts"),
        "state_values": _dumps(values, "state values"),
        "params": "true" if params else "false",
        "checksum": _PLACEHOLDER,
    }
    blob = memoryview(st_numpy.save(tensors, metadata=metadata))
    start, stop = _checksum_span(blob, _PLACEHOLDER)
    if start is None:
        raise RuntimeError("fastopt.save: could not place the checksum in the header")
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _atomic_write(path, [blob[:start], digest.encode("ascii"), blob[stop:]])


def _contiguous(array):
    """``array`` if C-contiguous, else a C-contiguous copy (keeps 0-d arrays 0-d, which
    ``np.ascontiguousarray`` does not)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def _index_key(index):
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or index < 0:
        raise TypeError(f"fastopt.save: state_dict uses key {index!r}; expected "
                        "parameter indices (non-negative ints)")
    return str(int(index))


def _step_number(step, index):
    if isinstance(step, np.ndarray):
        if step.size != 1:
            raise ValueError(f"fastopt.save: state[{index}]['step'] has shape {step.shape}")
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"fastopt.save: state[{index}]['step'] is {step!r}, not a number")
    step = step.item() if isinstance(step, np.generic) else step
    return int(step) if float(step).is_integer() else float(step)


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


def _atomic_write(path, chunks):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(folder)


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

    The whole file is read and checked before anything is written: its checksum, format
    version, rule (the optimizer's class name), number of param groups and of params per
    group, and every buffer's name, shape and dtype against the optimizer's parameters.
    The state dict built from it goes through ``optimizer.load_state_dict`` (which checks
    again before writing); the parameters are written only after that succeeded.

    Raises ``ValueError`` saying what differs (``"checkpoint ... is for Adam, optimizer
    is SGD"``), or ``"corrupt or truncated checkpoint ..."`` for a damaged file; the
    optimizer and the parameters are then unchanged.
    """
    st_numpy = _safetensors_numpy()
    path = os.fspath(path)
    with open(path, "rb") as file:
        data = file.read()
    metadata = _read_metadata(data, path)
    tensors = _verified_tensors(st_numpy, data, metadata, path)
    state_dict, new_params = _build(optimizer, tensors, metadata, path)
    try:
        optimizer.load_state_dict(state_dict)
    except TypeError as error:  # a hyperparameter of the wrong type: still a bad file
        raise ValueError(f"checkpoint {path} does not fit the optimizer: {error}") \
            from error
    for param, array in new_params:
        _write_param(param, array)


def _corrupt(path, why):
    return ValueError(f"corrupt or truncated checkpoint {path}: {why}")


def _read_metadata(data, path):
    if len(data) < 8:
        raise _corrupt(path, f"{len(data)} bytes, fewer than the 8-byte header length")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise _corrupt(path, f"header length {length} exceeds the {len(data) - 8} bytes "
                             "that follow it")
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"))
    except (ValueError, RecursionError):
        raise _corrupt(path, "the header is not valid JSON") from None
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
    ids, live = [], []
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
    position = {index: i for i, index in enumerate(ids)}
    if len(position) != len(ids):
        raise _corrupt(path, "a parameter index appears in two param groups")
    arrays = [as_numpy(p) for p in live]

    def param_for(index, what):
        if index not in position:
            raise ValueError(f"checkpoint {path} has {what} for parameter {index}, but the "
                             f"optimizer has {len(ids)} params")
        return position[index]

    def check(array, what, i):
        want = arrays[i]
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
                check(array, f"state[{index}][{key!r}]", i)
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
        if not _INDEX.fullmatch(key) or type(step) not in (int, float) \
                or not math.isfinite(step):
            raise _corrupt(path, f"bad step count {key!r}: {step!r}")
        index = int(key)
        param_for(index, "a step count")
        entry = state.setdefault(index, {})
        if "step" not in entry:
            entry["step"] = _to_torch(np.array(step, np.float32)) if torch_mode else step
    for key, entry_values in values.items():
        if not _INDEX.fullmatch(key) or not isinstance(entry_values, dict):
            raise _corrupt(path, f"bad state values for {key!r}")
        param_for(int(key), "state values")
        state.setdefault(int(key), {}).update(entry_values)
    for saved, group in zip(groups, optimizer.param_groups):
        for key, value in saved.items():  # JSON has no tuples: betas come back as tuples
            if isinstance(value, list) and isinstance(group.get(key), tuple):
                saved[key] = tuple(value)
    return {"state": state, "param_groups": groups}, new_params


def _to_torch(array):
    import torch

    return torch.from_numpy(np.array(array))  # a writable copy


def _write_param(param, array):
    if hasattr(param, "detach"):
        import torch

        with torch.no_grad():
            param.copy_(torch.from_numpy(np.array(array)))
    else:
        param[...] = array
