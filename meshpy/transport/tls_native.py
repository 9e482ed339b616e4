"""Two OpenSSL settings Python's ssl module does not expose, set on an SSLContext's own SSL_CTX:

- several ECDH groups in order (SSL_CTX_set1_groups_list; `set_ecdh_curve` takes one name), for
  Envoy's `ecdh_curves` lists;
- session ticket keys given by the user (Envoy's `session_ticket_keys`): every replica of a gateway
  with the same keys resumes the others' sessions, where keys made per process would make each client
  pay a full handshake whenever it lands on another one.

The SSL_CTX pointer is read from the SSLContext object (CPython keeps it right after the object
header) and checked before any use: the options OpenSSL reports for it must be the ones Python
reports. If that check fails, or libssl cannot be opened, `available()` is False and the callers say
so in a config error instead of guessing.

Ticket keys are Envoy's 80 bytes: a 16-byte name, a 32-byte HMAC-SHA256 secret and a 32-byte AES-256
key, which is also the layout OpenSSL takes for one key (SSL_CTRL_SET_TLSEXT_TICKET_KEYS): one key
needs no callback at all. With several, the first encrypts new tickets and each decrypts its own, as
in Envoy; that needs OpenSSL's ticket callback, here a ctypes function run once per ticket issued or
presented (a handshake's worth of work, never per request).
"""

from __future__ import annotations

import ctypes
import functools
import os
import ssl
from collections.abc import Callable

TICKET_KEY_BYTES = 80
_NAME, _HMAC, _AES = 16, 32, 32
_SET_GROUPS_LIST = 92  # SSL_CTRL_SET_GROUPS_LIST
_SET_TICKET_KEYS = 59  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS
_SET_TICKET_KEY_CB = 72  # SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB
# OpenSSL's names for the groups Envoy spells its own way.
GROUP_NAMES = {"P-256": "P-256", "P-384": "P-384", "P-521": "P-521", "X25519": "X25519", "X448": "X448"}

_TicketCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_ubyte), ctypes.POINTER(ctypes.c_ubyte),
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
)


class _Libs:
    def __init__(self) -> None:
        self.ssl = ssl_lib = ctypes.CDLL("libssl.so.3")
        self.crypto = crypto = ctypes.CDLL("libcrypto.so.3")
        ssl_lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        ssl_lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        ssl_lib.SSL_CTX_ctrl.restype = ctypes.c_long
        ssl_lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        ssl_lib.SSL_CTX_callback_ctrl.restype = ctypes.c_long
        ssl_lib.SSL_CTX_callback_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, _TicketCallback]
        for name in ("EVP_aes_256_cbc", "EVP_sha256"):
            getattr(crypto, name).restype = ctypes.c_void_p
            getattr(crypto, name).argtypes = []
        for name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
            getattr(crypto, name).restype = ctypes.c_int
            getattr(crypto, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                              ctypes.c_char_p, ctypes.c_void_p]
        crypto.HMAC_Init_ex.restype = ctypes.c_int
        crypto.HMAC_Init_ex.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                                        ctypes.c_void_p]


@functools.cache
def _libs() -> _Libs | None:
    # The soname Python's _ssl links against on the platforms meshpy ships for (OpenSSL 3).
    if not ssl.OPENSSL_VERSION.startswith("OpenSSL 3."):
        return None
    try:
        return _Libs()
    except (OSError, AttributeError):
        return None


def _ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    libs = _libs()
    if libs is None:
        return None
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or libs.ssl.SSL_CTX_get_options(pointer) != int(ctx.options):
        return None
    return int(pointer)


@functools.cache
def available() -> bool:
    """Whether this Python's ssl and libssl allow the settings here (checked on a scratch context)."""
    return _ctx_pointer(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) is not None


def set_groups(ctx: ssl.SSLContext, groups: tuple[str, ...]) -> str | None:
    """Offer `groups` (Envoy's names), in order. Returns why not, or None when set."""
    pointer = _ctx_pointer(ctx)
    libs = _libs()
    if pointer is None or libs is None:
        return "this Python's ssl module cannot set more than one group"
    names = ":".join(GROUP_NAMES.get(g, g) for g in groups).encode()
    if libs.ssl.SSL_CTX_ctrl(pointer, _SET_GROUPS_LIST, 0, ctypes.c_char_p(names)) != 1:
        return f"OpenSSL knows no group among {list(groups)}, or not all of them"
    return None


def set_ticket_keys(ctx: ssl.SSLContext, keys: tuple[bytes, ...]) -> str | None:
    """Encrypt session tickets with keys[0], decrypt with any. Returns why not, or None when set."""
    pointer = _ctx_pointer(ctx)
    libs = _libs()
    if pointer is None or libs is None:
        return "this Python's ssl module cannot set session ticket keys"
    if not keys or any(len(k) != TICKET_KEY_BYTES for k in keys):
        return f"each key must be exactly {TICKET_KEY_BYTES} bytes"
    if len(keys) == 1:
        buf = ctypes.create_string_buffer(keys[0], TICKET_KEY_BYTES)
        if libs.ssl.SSL_CTX_ctrl(pointer, _SET_TICKET_KEYS, TICKET_KEY_BYTES, ctypes.addressof(buf)) != 1:
            return "OpenSSL refused the key"
        return None
    callback = _TicketCallback(_ticket_callback(libs, keys))
    if libs.ssl.SSL_CTX_callback_ctrl(pointer, _SET_TICKET_KEY_CB, callback) != 1:
        return "OpenSSL refused the ticket callback"
    # OpenSSL holds only the C pointer: the context keeps the Python function alive as long as it lives.
    ctx.__dict__["_meshpy_ticket_callback"] = callback
    return None


def _ticket_callback(libs: _Libs, keys: tuple[bytes, ...]) -> Callable[..., int]:
    by_name = {k[:_NAME]: (i, k[_NAME:_NAME + _HMAC], k[_NAME + _HMAC:]) for i, k in enumerate(keys)}
    first_name, first_hmac, first_aes = keys[0][:_NAME], keys[0][_NAME:_NAME + _HMAC], keys[0][_NAME + _HMAC:]
    crypto = libs.crypto
    cipher, digest = crypto.EVP_aes_256_cbc(), crypto.EVP_sha256()

    def callback(_ssl: int, name: ctypes.Array[ctypes.c_ubyte], iv: ctypes.Array[ctypes.c_ubyte],
                 cipher_ctx: int, hmac_ctx: int, encrypt: int) -> int:
        # OpenSSL's contract: 1 = go on, 0 = no key (a full handshake), 2 = go on and issue a new
        # ticket (under the current key), -1 = error.
        try:
            if encrypt:
                ctypes.memmove(name, first_name, _NAME)
                ctypes.memmove(iv, os.urandom(16), 16)
                if crypto.HMAC_Init_ex(hmac_ctx, first_hmac, _HMAC, digest, None) != 1:
                    return -1
                made = crypto.EVP_EncryptInit_ex(cipher_ctx, cipher, None, first_aes, bytes(iv[:16]))
                return 1 if made == 1 else -1
            found = by_name.get(bytes(name[:_NAME]))
            if found is None:
                return 0
            index, hmac_key, aes_key = found
            if crypto.HMAC_Init_ex(hmac_ctx, hmac_key, _HMAC, digest, None) != 1:
                return -1
            if crypto.EVP_DecryptInit_ex(cipher_ctx, cipher, None, aes_key, bytes(iv[:16])) != 1:
                return -1
            return 1 if index == 0 else 2
        except Exception:  # an exception must not cross into OpenSSL's C frames
            return -1

    return callback
