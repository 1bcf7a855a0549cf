"""A raw HTTP/2 (h2c) client for gRPC, by hand: frames, an HPACK encoder of literals and a
full HPACK decoder (RFC 7541, Huffman included), and the protobuf varint.  No h2 module
needed.  Shared by the native backend's robustness test (which sends broken frames on
purpose) and the benchmark's probe (contrib/bench/bench.py)."""

import socket
import struct
import time

# ---- HPACK (RFC 7541) ------------------------------------------------------------------------

STATIC = [None] + [tuple(x.split(' ', 1)) if ' ' in x else (x, '') for x in (
    ':authority', ':method GET', ':method POST', ':path /', ':path /index.html', ':scheme http',
    ':scheme https', ':status 200', ':status 204', ':status 206', ':status 304', ':status 400',
    ':status 404', ':status 500', 'accept-charset', 'accept-encoding gzip, deflate',
    'accept-language', 'accept-ranges', 'accept', 'access-control-allow-origin', 'age', 'allow',
    'authorization', 'cache-control', 'content-disposition', 'content-encoding',
    'content-language', 'content-length', 'content-location', 'content-range', 'content-type',
    'cookie', 'date', 'etag', 'expect', 'expires', 'from', 'host', 'if-match',
    'if-modified-since', 'if-none-match', 'if-range', 'if-unmodified-since', 'last-modified',
    'link', 'location', 'max-forwards', 'proxy-authenticate', 'proxy-authorization', 'range',
    'referer', 'refresh', 'retry-after', 'server', 'set-cookie', 'strict-transport-security',
    'transfer-encoding', 'user-agent', 'vary', 'via', 'www-authenticate')]

# The code lengths of the 257 symbols (chr(48 + length)); the code is canonical (RFC 7541
# Appendix B): codes are consecutive in (length, symbol) order.
HUFFMAN_LENGTHS = (
    '=GLLLLLLLHNLLNLLLLLLLLNLLLLLLLLL6::<=68;::8;8666555666666678?6<:=677777777777777777777'
    '77878=C=>6?56565666577666567655677777?;>=LDFDDFFFGFGGGGGHGHHFGHGGGGEFGFGGHFEDFFGGEGFF'
    'HEFGGEEFEGFGGDFFFGFFGJJDCFGFIJJJKKJHICEJKKJKHEEJJLKKKDHDEFEEGFFIIHHJGJKJJKKKKKLKKKKKJN')


def _huffman_table():
    lens = [ord(c) - 48 for c in HUFFMAN_LENGTHS]
    table, code, prev = {}, 0, 0
    for sym in sorted(range(257), key=lambda i: (lens[i], i)):
        code <<= lens[sym] - prev
        prev = lens[sym]
        table[(prev, code)] = sym
        code += 1
    return table


HUFFMAN = _huffman_table()


def huffman_decode(data):
    out, code, n = bytearray(), 0, 0
    for byte in data:
        for i in range(7, -1, -1):
            code = code << 1 | (byte >> i) & 1
            n += 1
            sym = HUFFMAN.get((n, code))
            if sym is not None:
                if sym == 256:
                    raise ValueError('EOS in a Huffman string')
                out.append(sym)
                code, n = 0, 0
    if n > 7 or code != (1 << n) - 1:
        raise ValueError('bad Huffman padding')
    return bytes(out)


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append(value & 127 | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman: easy to write by hand."""
    name = name.encode() if isinstance(name, str) else name
    value = value.encode() if isinstance(value, str) else value
    return b'\x00' + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


class HpackDecoder:
    def __init__(self):
        self.dynamic = []  # newest first
        self.max_size = 4096

    def _size(self):
        return sum(32 + len(n) + len(v) for n, v in self.dynamic)

    def _evict(self):
        while self.dynamic and self._size() > self.max_size:
            self.dynamic.pop()

    def _entry(self, index):
        if index <= 0:
            raise ValueError('index 0')
        if index < len(STATIC):
            return STATIC[index]
        return self.dynamic[index - len(STATIC)]

    @staticmethod
    def _int(data, pos, prefix_bits):
        limit = (1 << prefix_bits) - 1
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            b = data[pos]
            pos += 1
            value += (b & 127) << shift
            shift += 7
            if not b & 128:
                return value, pos

    def _str(self, data, pos):
        huff = data[pos] & 128
        n, pos = self._int(data, pos, 7)
        raw = bytes(data[pos:pos + n])
        pos += n
        return (huffman_decode(raw) if huff else raw).decode('latin-1'), pos

    def decode(self, data):
        headers, pos = [], 0
        while pos < len(data):
            b = data[pos]
            if b & 0x80:
                idx, pos = self._int(data, pos, 7)
                headers.append(self._entry(idx))
            elif b & 0xc0 == 0x40 or b & 0xf0 in (0x00, 0x10):
                bits = 6 if b & 0xc0 == 0x40 else 4
                idx, pos = self._int(data, pos, bits)
                name = self._entry(idx)[0] if idx else None
                if name is None:
                    name, pos = self._str(data, pos)
                value, pos = self._str(data, pos)
                headers.append((name, value))
                if bits == 6:
                    self.dynamic.insert(0, (name, value))
                    self._evict()
            elif b & 0xe0 == 0x20:
                self.max_size, pos = self._int(data, pos, 5)
                self._evict()
            else:
                raise ValueError('bad HPACK byte %#x' % b)
        return headers


# ---- a minimal HTTP/2 client -------------------------------------------------------------------

PREFACE = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = \
    0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 1, 4, 8, 0x20


def frame(ftype, flags, stream, payload=b''):
    return struct.pack('>I', len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack('>I', stream) + payload


def grpc_msg(payload, flag=0):
    return bytes([flag]) + struct.pack('>I', len(payload)) + payload


def grpc_messages(data):
    """Split gRPC length-prefixed messages: [(flag, payload)], leftover bytes."""
    out, pos = [], 0
    while len(data) - pos >= 5:
        n = struct.unpack('>I', data[pos + 1:pos + 5])[0]
        if len(data) - pos - 5 < n:
            break
        out.append((data[pos], bytes(data[pos + 5:pos + 5 + n])))
        pos += 5 + n
    return out, bytes(data[pos:])


class Stream:
    def __init__(self):
        self.blocks = []       # decoded header blocks, in order
        self.data = bytearray()
        self.ended = False
        self.rst = None

    def header(self, name):
        for block in self.blocks:
            for n, v in block:
                if n == name:
                    return v
        return None

    @property
    def grpc_status(self):
        v = self.header('grpc-status')
        return int(v) if v is not None else None

    @property
    def done(self):
        return self.ended or self.rst is not None


class H2:
    """A raw h2c client connection: frames by hand, enough HTTP/2 to talk gRPC."""

    def __init__(self, port, window=None, rcvbuf=None, preface=True, timeout=10,
                 host='127.0.0.1'):
        self.sock = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET,
                                  socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((host, port))
        except OSError:
            self.sock.close()
            raise
        self.buf = bytearray()
        self.hpack = HpackDecoder()
        self.streams = {}
        self.next_id = 1
        self.goaway = None
        self.eof = False
        self.pings = []
        self.settings_acked = False
        self.auto_window = window is not None
        self.unacked = {}  # stream (0: the connection) -> DATA bytes not yet acknowledged
        self.window_updates = {}  # stream (0: the connection) -> WINDOW_UPDATE credit received
        self.pending_block = None
        if preface:
            settings = b''
            if window:
                settings = struct.pack('>HI', 4, window)  # SETTINGS_INITIAL_WINDOW_SIZE
            self.send(PREFACE + frame(SETTINGS, 0, 0, settings))
            if window:
                self.send(frame(WINDOW_UPDATE, 0, 0, struct.pack('>I', window)))

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def stream(self, sid):
        return self.streams.setdefault(sid, Stream())

    def request(self, path, body=b'', end=True, extra=(), content_type='application/grpc',
                authority=None):
        sid = self.next_id
        self.next_id += 2
        block = b''.join(hpack_literal(n, v) for n, v in (
            (':method', 'POST'), (':scheme', 'http'), (':path', path),
            (':authority', authority or '127.0.0.1'), ('content-type', content_type),
            ('te', 'trailers')) + tuple(extra))
        self.stream(sid)
        # HEADERS, then CONTINUATION frames for a block above the 16 KiB frame size
        chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        out = b''
        for i, chunk in enumerate(chunks):
            flags = END_HEADERS if i == len(chunks) - 1 else 0
            if i == 0:
                out += frame(HEADERS, flags | (END_STREAM if end and body is None else 0), sid,
                             chunk)
            else:
                out += frame(CONTINUATION, flags, sid, chunk)
        if body is not None:
            out += frame(DATA, END_STREAM if end else 0, sid, body)
        self.send(out)
        return sid

    def data(self, sid, payload, end=False):
        return self.send(frame(DATA, END_STREAM if end else 0, sid, payload))

    def _on_frame(self, ftype, flags, sid, payload):
        if ftype == SETTINGS:
            if flags & 1:
                self.settings_acked = True
            else:
                self.send(frame(SETTINGS, 1, 0))
        elif ftype == PING:
            if flags & 1:
                self.pings.append(bytes(payload))
            else:
                self.send(frame(PING, 1, 0, payload))
        elif ftype == GOAWAY:
            last, code = struct.unpack('>II', payload[:8])
            self.goaway = (last & 0x7fffffff, code, bytes(payload[8:]))
        elif ftype == RST_STREAM:
            self.stream(sid).rst = struct.unpack('>I', payload[:4])[0]
        elif ftype == WINDOW_UPDATE:
            self.window_updates[sid] = self.window_updates.get(sid, 0) + \
                (struct.unpack('>I', payload[:4])[0] & 0x7fffffff)
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                pos, end = 0, len(payload)
                if flags & PADDED:
                    end -= payload[0]
                    pos = 1
                if flags & PRIORITY_FLAG:
                    pos += 5
                self.pending_block = (sid, flags, bytearray(payload[pos:end]))
            else:
                self.pending_block[2].extend(payload)
                flags |= self.pending_block[1] & END_STREAM
            if flags & END_HEADERS:
                sid, hflags, block = self.pending_block
                self.pending_block = None
                st = self.stream(sid)
                st.blocks.append(self.hpack.decode(bytes(block)))
                if hflags & END_STREAM:
                    st.ended = True
        elif ftype == DATA:
            st = self.stream(sid)
            body = payload
            if flags & PADDED:
                body = payload[1:len(payload) - payload[0]]
            st.data.extend(body)
            if flags & END_STREAM:
                st.ended = True
            if payload:
                for x in (0, sid):
                    self.unacked[x] = self.unacked.get(x, 0) + len(payload)
                if self.auto_window:
                    self.ack()

    def ack(self):
        """WINDOW_UPDATE for every DATA byte received so far."""
        out = b''.join(frame(WINDOW_UPDATE, 0, x, struct.pack('>I', n))
                       for x, n in self.unacked.items() if n > 0)
        self.unacked = {}
        if out:
            self.send(out)

    def pump(self, timeout=0.2, max_bytes=1 << 20):
        """Read what arrives within timeout (at most max_bytes) and handle whole frames."""
        if self.eof:
            return False
        self.sock.settimeout(timeout)
        got = 0
        try:
            while got < max_bytes:
                chunk = self.sock.recv(min(65536, max_bytes - got))
                if not chunk:
                    self.eof = True
                    break
                got += len(chunk)
                self.buf.extend(chunk)
                self.sock.settimeout(0.001)
        except (socket.timeout, BlockingIOError):
            pass
        except OSError:
            self.eof = True
        pos = 0
        while len(self.buf) - pos >= 9:
            n = int.from_bytes(self.buf[pos:pos + 3], 'big')
            if len(self.buf) - pos < 9 + n:
                break
            ftype, flags = self.buf[pos + 3], self.buf[pos + 4]
            sid = int.from_bytes(self.buf[pos + 5:pos + 9], 'big') & 0x7fffffff
            self._on_frame(ftype, flags, sid, self.buf[pos + 9:pos + 9 + n])
            pos += 9 + n
        del self.buf[:pos]
        return got > 0

    def wait(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            if pred():
                return True
            if self.eof or time.monotonic() >= deadline:
                return bool(pred())
            self.pump(0.05)

    def wait_stream(self, sid, timeout=10):
        self.wait(lambda: self.stream(sid).done, timeout)
        return self.stream(sid)

    def wait_closed(self, timeout=10):
        """True when the server closes the connection within timeout."""
        return self.wait(lambda: self.eof, timeout)


# ---- protobuf ---------------------------------------------------------------------------------

def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7f | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def pb_bytes(field, data):
    """A length-delimited protobuf field."""
    return varint(field << 3 | 2) + varint(len(data)) + data
