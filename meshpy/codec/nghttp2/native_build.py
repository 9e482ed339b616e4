"""Builds meshpy's compiled binding of libnghttp2 (cffi API mode):

    python -m meshpy.codec.nghttp2.native_build

Optional: without it meshpy binds the same library in ABI mode (no compiler), a little slower. Built by
`make` when a C compiler and Debian's libnghttp2-dev are there, and in the image's build stage; the
module lands beside this file (`_native.*.so`, not in git).

What the C here adds to nghttp2 is less crossing between C and Python, where the ABI binding spends
most of its time (docs/http2-codec.md):
- a header block reaches Python once, as `name\\0value\\0...` gathered in C, instead of one callback
  per field (with its size counted against the limit there, so an HPACK bomb never reaches Python);
- a stream's DATA reaches Python once per read, however many frames brought it;
- a header list is submitted as one NUL-joined buffer that C turns into the nghttp2_nv array;
- the other callbacks are `extern "Python"` functions, cheaper to enter than ABI-mode ones.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cffi  # type: ignore[import-untyped]  # cffi ships no type stubs

from meshpy.codec.nghttp2._abi import CDEF

SHIM_CDEF = """
typedef struct { size_t at; size_t len; int32_t sid; } meshpy_mark;
typedef struct { int pending; int overflow; int32_t block_sid; char *out; meshpy_mark *marks; size_t nmarks;
    ...; } meshpy_h2;
meshpy_h2 *meshpy_h2_new(size_t limit);
void meshpy_h2_free(nghttp2_session *session, meshpy_h2 *m);
void meshpy_h2_callbacks(nghttp2_session_callbacks *cbs);
ssize_t meshpy_h2_send_all(nghttp2_session *session, meshpy_h2 *m);
ssize_t meshpy_h2_recv(nghttp2_session *session, meshpy_h2 *m, const uint8_t *in, size_t inlen);
int32_t meshpy_h2_submit_whole(nghttp2_session *session, meshpy_h2 *m, int32_t stream_id, const char *head,
    size_t hlen, size_t hn, const char *body, size_t blen, const char *trailers, size_t tlen, size_t tn);
int32_t meshpy_h2_submit(nghttp2_session *session, int kind, int32_t stream_id, const char *joined,
    size_t len, size_t n, const nghttp2_data_provider *prd);
extern "Python" int meshpy_py_headers(int32_t stream_id, int cat, int flags, const char *block, size_t len);
extern "Python" int meshpy_py_frame(int type, int flags, int32_t stream_id, uint32_t a, int32_t b);
extern "Python" int meshpy_py_data(int32_t stream_id, const char *data, size_t len);
extern "Python" int meshpy_py_close(nghttp2_session *, int32_t stream_id, uint32_t error_code, void *);
extern "Python" int meshpy_py_invalid(nghttp2_session *, const nghttp2_frame *, int lib_error_code, void *);
extern "Python" ssize_t meshpy_py_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
    size_t length, uint32_t *data_flags, nghttp2_data_source *source, void *user_data);
"""

SOURCE = r"""
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>

typedef struct { size_t at; size_t len; int32_t sid; } meshpy_mark;

typedef struct {
    int pending;        /* a header block is open: begun, not yet ended */
    int overflow;       /* it grew past the limit */
    int32_t block_sid;
    size_t size, limit; /* counted as HPACK counts a header list: 32 + name + value per field */
    char *buf;
    size_t len, cap;
    char *out;          /* what meshpy_h2_send_all gathered */
    size_t out_len, out_cap;
    meshpy_mark *marks; /* where DATA bodies sent without a copy go in `out` (see on_send_data) */
    size_t nmarks, marks_cap;
    char *data;         /* DATA received for one stream, not yet handed to Python */
    size_t data_len, data_cap;
    int32_t data_sid;
    struct meshpy_whole *wholes;  /* every whole message not yet sent to its end (see submit_whole) */
} meshpy_h2;

static int meshpy_py_headers(int32_t, int, int, const char *, size_t);
static int meshpy_py_frame(int, int, int32_t, uint32_t, int32_t);
static int meshpy_py_data(int32_t, const char *, size_t);
static int meshpy_py_close(nghttp2_session *, int32_t, uint32_t, void *);
static int meshpy_py_invalid(nghttp2_session *, const nghttp2_frame *, int, void *);

static meshpy_h2 *meshpy_h2_new(size_t limit) {
    meshpy_h2 *m = calloc(1, sizeof *m);
    if (m == NULL) return NULL;
    m->limit = limit;
    m->cap = 1024;
    m->buf = malloc(m->cap);
    if (m->buf == NULL) { free(m); return NULL; }
    return m;
}

static void whole_drop(meshpy_h2 *m, struct meshpy_whole *w);
/* The user data of a stream whose body Python sends (meshpy_py_read): its close matters to Python. */
static char python_out;

static void meshpy_h2_free(nghttp2_session *session, meshpy_h2 *m) {
    nghttp2_session_del(session);
    while (m->wholes) whole_drop(m, m->wholes);
    free(m->buf);
    free(m->out);
    free(m->data);
    free(m->marks);
    free(m);
}

/* DATA for one stream is handed to Python once per read, not once per frame (a peer sending 8 KiB
   frames would otherwise cost a callback, an event and the whole body path each). Whatever comes
   next for Python (another stream's data, a frame, a close, the end of the read) flushes it first,
   so the order of events is kept. */
static int flush_data(meshpy_h2 *m) {
    size_t n = m->data_len;
    if (n == 0) return 0;
    m->data_len = 0;
    return meshpy_py_data(m->data_sid, m->data, n);
}

static ssize_t meshpy_h2_recv(nghttp2_session *session, meshpy_h2 *m, const uint8_t *in, size_t inlen) {
    ssize_t rv = nghttp2_session_mem_recv(session, in, inlen);
    int flushed = flush_data(m);
    if (m->data_cap > (4u << 20)) {
        free(m->data);
        m->data = NULL;
        m->data_cap = 0;
    }
    if (rv >= 0 && flushed != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    return rv;
}

/* Everything nghttp2 has to send, in one buffer (m->out): one call from Python instead of one per
   frame. Returns its length, or nghttp2's (negative) error. */
/* Append n bytes to a growable buffer (doubling from `first`); 0, or -1 when out of memory. */
static int append(char **buf, size_t *len, size_t *cap, size_t first, const void *data, size_t n) {
    if (*len + n > *cap) {
        size_t grown_cap = *cap ? *cap : first;
        char *grown;
        while (grown_cap < *len + n) grown_cap *= 2;
        grown = realloc(*buf, grown_cap);
        if (grown == NULL) return -1;
        *buf = grown;
        *cap = grown_cap;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    return 0;
}

static int out_append(meshpy_h2 *m, const uint8_t *data, size_t n) {
    if (append(&m->out, &m->out_len, &m->out_cap, 16384, data, n) != 0) return NGHTTP2_ERR_NOMEM;
    return 0;
}

static ssize_t meshpy_h2_send_all(nghttp2_session *session, meshpy_h2 *m) {
    const uint8_t *data;
    ssize_t n;
    m->out_len = 0;
    m->nmarks = 0;
    if (m->out_cap > (4u << 20)) {  /* a burst made it large once: do not keep that for good */
        free(m->out);
        m->out = NULL;
        m->out_cap = 0;
    }
    while ((n = nghttp2_session_mem_send(session, &data)) > 0) {
        if (out_append(m, data, (size_t)n) != 0) return NGHTTP2_ERR_NOMEM;
    }
    return n < 0 ? n : (ssize_t)m->out_len;
}

/* A DATA frame whose body Python keeps (the read callback said NO_COPY, for large pieces): its header
   goes into `out` and a mark says where the body goes, which Python puts there without copying it
   into nghttp2 and back out (meshpy.codec.nghttp2.session). meshpy never pads. */
static int on_send_data(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *source, void *u) {
    meshpy_h2 *m = u;
    if (out_append(m, framehd, 9) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (m->nmarks == m->marks_cap) {
        size_t cap = m->marks_cap ? 2 * m->marks_cap : 16;
        meshpy_mark *grown = realloc(m->marks, cap * sizeof *grown);
        if (grown == NULL) return NGHTTP2_ERR_CALLBACK_FAILURE;
        m->marks = grown;
        m->marks_cap = cap;
    }
    m->marks[m->nmarks].at = m->out_len;
    m->marks[m->nmarks].len = length;
    m->marks[m->nmarks].sid = frame->hd.stream_id;
    m->nmarks++;
    return 0;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    meshpy_h2 *m = u;
    m->pending = 1;
    m->block_sid = f->hd.stream_id;
    m->len = 0;
    m->size = 0;
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *u) {
    meshpy_h2 *m = u;
    m->size += namelen + valuelen + 32;
    if (m->size > m->limit) {
        m->overflow = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (append(&m->buf, &m->len, &m->cap, 1024, name, namelen) != 0
            || append(&m->buf, &m->len, &m->cap, 1024, "", 1) != 0
            || append(&m->buf, &m->len, &m->cap, 1024, value, valuelen) != 0
            || append(&m->buf, &m->len, &m->cap, 1024, "", 1) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    meshpy_h2 *m = u;
    if (f->hd.type == NGHTTP2_DATA && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;  /* gathered */
    if (m->data_len && flush_data(m) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        m->pending = 0;
        return meshpy_py_headers(f->hd.stream_id, f->headers.cat, f->hd.flags, m->buf,
                                 m->len ? m->len - 1 : 0);
    case NGHTTP2_DATA:
        return meshpy_py_frame(f->hd.type, f->hd.flags, f->hd.stream_id, 0, 0);
    case NGHTTP2_RST_STREAM:
        return meshpy_py_frame(f->hd.type, f->hd.flags, f->hd.stream_id, f->rst_stream.error_code, 0);
    case NGHTTP2_GOAWAY:
        return meshpy_py_frame(f->hd.type, f->hd.flags, 0, f->goaway.error_code, f->goaway.last_stream_id);
    case NGHTTP2_SETTINGS:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) return 0;
        return meshpy_py_frame(f->hd.type, 0, 0,
            nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS), 0);
    case NGHTTP2_PING:
    case NGHTTP2_WINDOW_UPDATE:
        return meshpy_py_frame(f->hd.type, f->hd.flags, f->hd.stream_id, 0, 0);
    default:
        return 0;
    }
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *u) {
    meshpy_h2 *m = u;
    if (m->data_len && m->data_sid != stream_id && flush_data(m) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (append(&m->data, &m->data_len, &m->data_cap, 65536, data, len) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    m->data_sid = stream_id;
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t code, void *u) {
    meshpy_h2 *m = u;
    void *w = nghttp2_session_get_stream_user_data(s, stream_id);
    if (m->data_len && flush_data(m) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (w != NULL && w != &python_out)
        whole_drop(m, w);  /* closed (reset) before its whole message was sent */
    /* Python hears of a close only when it has something to do: the stream's data waiting there to
       be sent, a header block of it still open, or a reset to report. */
    if (w == &python_out || code != 0 || (m->pending && m->block_sid == stream_id))
        return meshpy_py_close(s, stream_id, code, u);
    return 0;
}

static int on_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int code, void *u) {
    meshpy_h2 *m = u;
    if (m->data_len && flush_data(m) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    return meshpy_py_invalid(s, f, code, u);
}

static void meshpy_h2_callbacks(nghttp2_session_callbacks *cbs) {
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, on_invalid_frame);
    nghttp2_session_callbacks_set_send_data_callback(cbs, on_send_data);
}

/* kind: 0 request, 1 response, 2 headers (a 1xx), 3 trailers. `joined`: n names and values, each
   ended by NUL except the last; any other count of NULs (one in a field) is refused. */
static int32_t submit_nv(nghttp2_session *session, int kind, int32_t stream_id, const char *joined,
                         size_t len, size_t n, const nghttp2_data_provider *prd, void *stream_data) {
    nghttp2_nv stack[48];
    nghttp2_nv *nva = n <= 48 ? stack : malloc(n * sizeof *nva);
    const char *p = joined, *end = joined + len;
    size_t i;
    int32_t rv;
    if (nva == NULL) return NGHTTP2_ERR_NOMEM;
    rv = n ? 0 : NGHTTP2_ERR_INVALID_ARGUMENT;
    for (i = 0; i < n && rv == 0; i++) {
        const char *z = memchr(p, 0, (size_t)(end - p));
        if (z == NULL) {  /* a NUL too few: one held in a field */
            rv = NGHTTP2_ERR_INVALID_ARGUMENT;
            break;
        }
        nva[i].name = (uint8_t *)p;
        nva[i].namelen = (size_t)(z - p);
        p = z + 1;
        z = memchr(p, 0, (size_t)(end - p));
        if ((z == NULL) != (i + 1 == n)) {  /* the last value ends the buffer, the others a NUL */
            rv = NGHTTP2_ERR_INVALID_ARGUMENT;
            break;
        }
        if (z == NULL) z = end;
        nva[i].value = (uint8_t *)p;
        nva[i].valuelen = (size_t)(z - p);
        nva[i].flags = NGHTTP2_NV_FLAG_NONE;
        p = z + 1;
    }
    if (rv != 0) {
        if (nva != stack) free(nva);
        return rv;
    }
    if (prd != NULL && stream_data == NULL) stream_data = &python_out;
    switch (kind) {
    case 0: rv = nghttp2_submit_request(session, NULL, nva, n, prd, stream_data); break;
    case 1:
        rv = nghttp2_submit_response(session, stream_id, nva, n, prd);
        if (rv == 0 && stream_data != NULL)
            nghttp2_session_set_stream_user_data(session, stream_id, stream_data);
        break;
    case 2: rv = nghttp2_submit_headers(session, NGHTTP2_FLAG_NONE, stream_id, NULL, nva, n, NULL); break;
    default: rv = nghttp2_submit_trailer(session, stream_id, nva, n); break;
    }
    if (nva != stack) free(nva);
    return rv;
}

static int32_t meshpy_h2_submit(nghttp2_session *session, int kind, int32_t stream_id, const char *joined,
                                size_t len, size_t n, const nghttp2_data_provider *prd) {
    return submit_nv(session, kind, stream_id, joined, len, n, prd, NULL);
}

/* A whole message at once (a small body, its end known: a gRPC unary call or answer): the body and
   the trailers are copied here and a C data provider sends them, with no Python on the way out.
   Each is the stream's user data until sent (or freed when the stream or the session goes first). */
struct meshpy_whole {
    struct meshpy_whole *prev, *next;
    size_t len, off, tlen, tn;  /* the body, what of it is sent; the joined trailers, their count */
    char buf[];                 /* the body, then the trailers */
};

static void whole_drop(meshpy_h2 *m, struct meshpy_whole *w) {
    if (w->prev) w->prev->next = w->next; else m->wholes = w->next;
    if (w->next) w->next->prev = w->prev;
    free(w);
}

static ssize_t whole_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags,
                          nghttp2_data_source *src, void *u) {
    struct meshpy_whole *w = src->ptr;
    size_t n = w->len - w->off;
    if (n > length) n = length;
    memcpy(buf, w->buf + w->off, n);
    w->off += n;
    if (w->off < w->len) return (ssize_t)n;
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (w->tn) {  /* nghttp2 sends trailers submitted from inside this callback after the last DATA */
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (submit_nv(s, 3, sid, w->buf + w->len, w->tlen, w->tn, NULL, NULL) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    nghttp2_session_set_stream_user_data(s, sid, NULL);
    whole_drop(u, w);
    return (ssize_t)n;
}

/* stream_id 0: a request (its stream id back); else the response on that stream. 0 or the id, or
   nghttp2's (negative) error. */
static int32_t meshpy_h2_submit_whole(nghttp2_session *session, meshpy_h2 *m, int32_t stream_id,
        const char *head, size_t hlen, size_t hn, const char *body, size_t blen,
        const char *trailers, size_t tlen, size_t tn) {
    nghttp2_data_provider prd;
    int32_t rv;
    struct meshpy_whole *w = malloc(sizeof *w + blen + tlen);
    if (w == NULL) return NGHTTP2_ERR_NOMEM;
    w->len = blen;
    w->off = 0;
    w->tlen = tlen;
    w->tn = tn;
    memcpy(w->buf, body, blen);
    if (tlen) memcpy(w->buf + blen, trailers, tlen);
    w->prev = NULL;
    w->next = m->wholes;
    if (m->wholes) m->wholes->prev = w;
    m->wholes = w;
    prd.source.ptr = w;
    prd.read_callback = whole_read;
    rv = submit_nv(session, stream_id ? 1 : 0, stream_id, head, hlen, hn, &prd, w);
    if (rv < 0) whole_drop(m, w);
    return rv;
}
"""


def builder() -> cffi.FFI:
    ffi = cffi.FFI()
    # The ABI declarations say `const char *` where the header says `const uint8_t *` (so that ABI
    # mode can unpack bytes): here they must match the header.
    cdef = CDEF.replace("const char *name,", "const uint8_t *name,").replace(
        "const char *value,", "const uint8_t *value,").replace("const char *data,", "const uint8_t *data,")
    ffi.cdef(cdef + SHIM_CDEF)
    ffi.set_source("meshpy.codec.nghttp2._native", SOURCE, libraries=["nghttp2"])
    return ffi


def main() -> int:
    here = Path(__file__).resolve().parent
    try:
        with tempfile.TemporaryDirectory(prefix="meshpy-native-") as tmp:
            built = Path(builder().compile(tmpdir=tmp))
            target = here / built.name
            built.replace(target)
    except Exception as err:  # cffi reports compiler and header problems variously
        print(f"meshpy: the compiled nghttp2 binding was not built ({err}); meshpy will bind "
              "libnghttp2 in ABI mode (install a C compiler and libnghttp2-dev for the faster one)",
              file=sys.stderr)
        return 1
    print(f"meshpy: built {target.relative_to(here.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
