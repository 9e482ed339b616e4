"""libnghttp2's C interface as cffi sees it in ABI mode: no compiler and no headers at run time.

The declarations are those of nghttp2/nghttp2.h as Debian's libnghttp2-14 (1.52, with the security
fixes that added the stream reset rate limit and the CONTINUATION limit) ships them, cut to what
meshpy calls. `nghttp2_frame` is a union whose members all begin with the frame header; only the
members meshpy reads are declared (it is only ever read through a pointer nghttp2 hands over).
"""

from __future__ import annotations

from typing import Any

import cffi  # type: ignore[import-untyped]  # cffi ships no type stubs

CDEF = """
typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
typedef struct nghttp2_option nghttp2_option;
typedef struct nghttp2_stream nghttp2_stream;
typedef struct { uint8_t *name; uint8_t *value; size_t namelen; size_t valuelen; uint8_t flags; } nghttp2_nv;
typedef struct { size_t length; int32_t stream_id; uint8_t type; uint8_t flags; uint8_t reserved; }
    nghttp2_frame_hd;
typedef struct { int32_t stream_id; int32_t weight; uint8_t exclusive; } nghttp2_priority_spec;
typedef enum { NGHTTP2_HCAT_REQUEST = 0, NGHTTP2_HCAT_RESPONSE = 1, NGHTTP2_HCAT_PUSH_RESPONSE = 2,
    NGHTTP2_HCAT_HEADERS = 3 } nghttp2_headers_category;
typedef struct { nghttp2_frame_hd hd; size_t padlen; nghttp2_priority_spec pri_spec; nghttp2_nv *nva;
    size_t nvlen; nghttp2_headers_category cat; } nghttp2_headers;
typedef struct { nghttp2_frame_hd hd; uint32_t error_code; } nghttp2_rst_stream;
typedef struct { nghttp2_frame_hd hd; int32_t last_stream_id; uint32_t error_code; uint8_t *opaque_data;
    size_t opaque_data_len; uint8_t reserved; } nghttp2_goaway;
typedef union { nghttp2_frame_hd hd; nghttp2_headers headers; nghttp2_rst_stream rst_stream;
    nghttp2_goaway goaway; } nghttp2_frame;
typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;
typedef union { int fd; void *ptr; } nghttp2_data_source;
typedef ssize_t (*nghttp2_data_source_read_callback)(nghttp2_session *session, int32_t stream_id,
    uint8_t *buf, size_t length, uint32_t *data_flags, nghttp2_data_source *source, void *user_data);
typedef struct { nghttp2_data_source source; nghttp2_data_source_read_callback read_callback; }
    nghttp2_data_provider;

typedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session *, const nghttp2_frame *, void *);
typedef int (*nghttp2_on_header_callback)(nghttp2_session *, const nghttp2_frame *, const char *name,
    size_t namelen, const char *value, size_t valuelen, uint8_t flags, void *);
typedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session *, const nghttp2_frame *, void *);
typedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session *, uint8_t flags, int32_t stream_id,
    const char *data, size_t len, void *);
typedef int (*nghttp2_on_stream_close_callback)(nghttp2_session *, int32_t stream_id, uint32_t error_code,
    void *);
typedef int (*nghttp2_on_invalid_frame_recv_callback)(nghttp2_session *, const nghttp2_frame *,
    int lib_error_code, void *);

int nghttp2_session_callbacks_new(nghttp2_session_callbacks **callbacks_ptr);
void nghttp2_session_callbacks_del(nghttp2_session_callbacks *callbacks);
void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *,
    nghttp2_on_begin_headers_callback);
void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *,
    nghttp2_on_header_callback);
void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *,
    nghttp2_on_frame_recv_callback);
void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *,
    nghttp2_on_data_chunk_recv_callback);
void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *,
    nghttp2_on_stream_close_callback);
void nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(nghttp2_session_callbacks *,
    nghttp2_on_invalid_frame_recv_callback);

int nghttp2_option_new(nghttp2_option **option_ptr);
void nghttp2_option_del(nghttp2_option *option);
void nghttp2_option_set_no_auto_window_update(nghttp2_option *option, int val);
void nghttp2_option_set_no_closed_streams(nghttp2_option *option, int val);
void nghttp2_option_set_max_continuations(nghttp2_option *option, size_t val);
void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option *option, uint64_t burst, uint64_t rate);
void nghttp2_option_set_max_outbound_ack(nghttp2_option *option, size_t val);
void nghttp2_option_set_max_settings(nghttp2_option *option, size_t val);

int nghttp2_session_client_new2(nghttp2_session **session_ptr, const nghttp2_session_callbacks *callbacks,
    void *user_data, const nghttp2_option *option);
int nghttp2_session_server_new2(nghttp2_session **session_ptr, const nghttp2_session_callbacks *callbacks,
    void *user_data, const nghttp2_option *option);
void nghttp2_session_del(nghttp2_session *session);
ssize_t nghttp2_session_mem_recv(nghttp2_session *session, const uint8_t *in, size_t inlen);
ssize_t nghttp2_session_mem_send(nghttp2_session *session, const uint8_t **data_ptr);
int nghttp2_session_want_read(nghttp2_session *session);
int nghttp2_session_want_write(nghttp2_session *session);
int nghttp2_session_consume(nghttp2_session *session, int32_t stream_id, size_t size);
int nghttp2_session_resume_data(nghttp2_session *session, int32_t stream_id);
int32_t nghttp2_session_get_stream_remote_window_size(nghttp2_session *session, int32_t stream_id);
int32_t nghttp2_session_get_remote_window_size(nghttp2_session *session);
int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *session);
uint32_t nghttp2_session_get_remote_settings(nghttp2_session *session, int id);
int nghttp2_session_set_local_window_size(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    int32_t window_size);
nghttp2_stream *nghttp2_session_find_stream(nghttp2_session *session, int32_t stream_id);
int nghttp2_session_terminate_session(nghttp2_session *session, uint32_t error_code);

int32_t nghttp2_submit_request(nghttp2_session *session, const nghttp2_priority_spec *pri_spec,
    const nghttp2_nv *nva, size_t nvlen, const nghttp2_data_provider *data_prd, void *stream_user_data);
int nghttp2_submit_response(nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva,
    size_t nvlen, const nghttp2_data_provider *data_prd);
int32_t nghttp2_submit_headers(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    const nghttp2_priority_spec *pri_spec, const nghttp2_nv *nva, size_t nvlen, void *stream_user_data);
int nghttp2_submit_trailer(nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva, size_t nvlen);
int nghttp2_submit_data(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    const nghttp2_data_provider *data_prd);
int nghttp2_submit_rst_stream(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    uint32_t error_code);
int nghttp2_submit_settings(nghttp2_session *session, uint8_t flags, const nghttp2_settings_entry *iv,
    size_t niv);
int nghttp2_submit_ping(nghttp2_session *session, uint8_t flags, const uint8_t *opaque_data);
int nghttp2_submit_goaway(nghttp2_session *session, uint8_t flags, int32_t last_stream_id,
    uint32_t error_code, const uint8_t *opaque_data, size_t opaque_data_len);
const char *nghttp2_strerror(int lib_error_code);
typedef struct { int age; int version_num; const char *version_str; const char *proto_str; } nghttp2_info;
nghttp2_info *nghttp2_version(int least_version);
"""

# Debian's package name for it, then the unversioned name other systems may have.
LIBRARIES = ("libnghttp2.so.14", "libnghttp2.so")
MIN_VERSION = 0x013400  # 1.52.0: the release Debian 12 ships (with the backported DoS fixes)

# From nghttp2.h.
FRAME_DATA, FRAME_HEADERS, FRAME_RST_STREAM, FRAME_SETTINGS, FRAME_PING, FRAME_GOAWAY, FRAME_WINDOW_UPDATE = \
    0, 1, 3, 4, 6, 7, 8
FLAG_END_STREAM, FLAG_ACK = 0x01, 0x01
DATA_FLAG_EOF, DATA_FLAG_NO_END_STREAM, DATA_FLAG_NO_COPY = 0x01, 0x02, 0x04
HCAT_REQUEST, HCAT_RESPONSE, HCAT_HEADERS = 0, 1, 3
ERR_DEFERRED = -508
ERR_TEMPORAL_CALLBACK_FAILURE = -521
ERR_CALLBACK_FAILURE = -902
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 3, 4

ffi = cffi.FFI()
ffi.cdef(CDEF)
_lib: Any = None


def load() -> Any:
    """The library, opened once; OSError when no libnghttp2 loads or it is older than 1.52."""
    global _lib
    if _lib is None:
        errors = []
        for name in LIBRARIES:
            try:
                lib = ffi.dlopen(name)
            except OSError as err:
                errors.append(str(err))
                continue
            info = lib.nghttp2_version(0)
            if info.version_num < MIN_VERSION:
                raise OSError(f"libnghttp2 {ffi.string(info.version_str).decode()} is older than 1.52")
            _lib = lib
            break
        else:
            raise OSError("; ".join(errors))
    return _lib


def version() -> str:
    return str(ffi.string(load().nghttp2_version(0).version_str).decode())


def strerror(rv: int) -> str:
    return str(ffi.string(load().nghttp2_strerror(rv)).decode())
