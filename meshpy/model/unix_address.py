"""Unix domain socket addresses (Envoy's `pipe`): how they are written, checked and named.

An `Address` with a `path` is a Unix socket; its host and port are unused. A path that starts with `@`
is in Linux's abstract namespace: no file, the `@` standing for the leading NUL byte of the kernel's
name, as Envoy writes it. `mode` is the permission bits of a listening socket's file (0: what the umask
leaves); Envoy refuses it for an abstract name, which has no file.

meshpy YAML writes one where an address goes as `unix:/run/app.sock` or `unix:@name` (a listener may
give a mode as `{unix: /run/app.sock, mode: 0660}`). Where meshpy keeps an address to connect to at run
time (a host's pool) it is Python's own socket address: a (host, port) tuple for TCP, a str path for a
Unix socket (`SockAddr`).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshpy.model.types import Address

SockAddr = tuple[str, int] | str
PREFIX = "unix:"
# The kernel's sun_path holds 108 bytes with the terminating NUL; Envoy refuses a longer path the same way.
MAX_PATH_BYTES = 107
MAX_MODE = 0o777
_ABSTRACT_TARGET = "unix-abstract:"  # gRPC's name for the abstract namespace


def pipe_problem(path: str, mode: int) -> tuple[str, str] | None:
    """What is wrong with a Unix socket address, as (field, reason), or None; Envoy's checks."""
    if not path:
        return "path", "must not be empty"
    if "\0" in path:
        return "path", "must not contain a NUL byte (write the abstract namespace as @name)"
    if len(path.encode()) > MAX_PATH_BYTES:
        return "path", f"is longer than the {MAX_PATH_BYTES} bytes a Unix socket path may have"
    if mode > MAX_MODE or mode < 0:
        return "mode", f"must be at most 0777, got 0{mode:o}"
    if mode and path.startswith("@"):
        return "mode", "an abstract socket (@name) has no file to set a mode on"
    return None


def unix_address(path: str, mode: int = 0) -> Address:
    """A checked Unix socket address (ValueError says what is wrong)."""
    problem = pipe_problem(path, mode)
    if problem is not None:
        raise ValueError(f"{problem[0]} {path!r}: {problem[1]}" if problem[0] == "path" else
                         f"mode: {problem[1]}")
    return Address(host="", port=0, path=path, mode=mode)


def parse_unix(text: str) -> Address:
    """`unix:/run/app.sock`, `unix:./relative.sock` or `unix:@name` as an Address."""
    return unix_address(text[len(PREFIX):].strip())


def parse_mode(value: object) -> int:
    """Permission bits: an integer (YAML reads 0660 as octal already) or an octal string ("0660")."""
    if isinstance(value, bool):
        raise ValueError("expected permission bits such as 0660")
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal mode such as 0660") from None
    else:
        raise ValueError("expected permission bits such as 0660")
    if not 0 <= mode <= MAX_MODE:
        raise ValueError(f"{value!r} is not a mode (at most 0777, in octal with a leading 0: 0660)")
    return mode


def parse_unix_mapping(value: Mapping[object, object]) -> Address:
    """`{unix: PATH, mode: 0660}`: a listening Unix socket with its file's mode."""
    unknown = sorted(str(k) for k in value if k not in ("unix", "mode"))
    if unknown:
        raise ValueError(f"a Unix socket address has keys unix and mode, not {', '.join(unknown)}")
    path = value.get("unix")
    if not isinstance(path, str):
        raise ValueError("unix: expected the socket's path (or @name)")
    return unix_address(path.strip(), parse_mode(value["mode"]) if "mode" in value else 0)


def sock_address(address: Address) -> SockAddr:
    """What a connect is given: the path for a Unix socket, (host, port) otherwise."""
    return address.path if address.path else (address.host, address.port)


def os_path(path: str) -> str:
    """The name the kernel is given: an abstract name's `@` becomes the NUL byte."""
    return "\0" + path[1:] if path.startswith("@") else path


def from_os_name(name: object) -> str:
    """A Unix socket's name as the socket module reports it (str, or bytes for an abstract one) in
    Envoy's spelling; "" for an unnamed socket."""
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    if not isinstance(name, str):
        return ""
    return "@" + name[1:] if name.startswith("\0") else name


def label(address: SockAddr) -> str:
    """An endpoint as logs and /clusters name it (Envoy's: the path itself for a Unix socket)."""
    if isinstance(address, str):
        return address
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def grpc_target(address: Address) -> str:
    """The gRPC target of an address (what grpc.aio channels are given)."""
    if not address.path:
        return str(address)
    if address.path.startswith("@"):
        return _ABSTRACT_TARGET + address.path[1:]
    return PREFIX + address.path


def target_address(target: str) -> SockAddr | None:
    """The socket address of a gRPC target written by `grpc_target` (or `unix:///abs/path`); None for
    a host:port one, which the caller parses."""
    if target.startswith(_ABSTRACT_TARGET):
        return "@" + target[len(_ABSTRACT_TARGET):]
    if target.startswith(PREFIX):
        rest = target[len(PREFIX):]
        return "/" + rest.lstrip("/") if rest.startswith("//") else rest
    return None
