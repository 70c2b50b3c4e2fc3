/**
 * OTLP protobuf `ExportTraceServiceRequest` (what the Collector's awskinesisexporter writes by default,
 * `encoding.name: otlp_proto`), read by hand into the very shape of its OTLP/JSON form, so the
 * `otel_spans` processor flattens both with one code path and gets identical spans:
 *
 * - trace, span and parent ids as lowercase hex ('' when absent), as the OTLP/JSON rule writes them;
 * - fixed64 times as exact decimal strings (never through a double);
 * - AnyValue kinds as `stringValue`, `boolValue`, `intValue` (decimal string, int64 exact),
 *   `doubleValue` (number; "NaN", "Infinity", "-Infinity" as strings), `bytesValue` (base64),
 *   `arrayValue.values`, `kvlistValue.values`;
 * - resource and scope (with attributes), events, links (with traceState and flags), status,
 *   dropped counts, traceState and flags, schemaUrl.
 *
 * Unknown fields are skipped by wire type (forward compatible, as protobuf requires). Anything that
 * cannot be read (truncated varint or field, length beyond the buffer, wire types 3, 4, 6, 7, a string
 * that is not UTF-8, an id of the wrong length) throws `OtlpProtoError`; the decoder dead-letters the
 * record with that reason and its original bytes.
 */

export class OtlpProtoError extends Error {
  constructor(
    message: string,
    readonly kind: 'truncated' | 'bad_wire_type' | 'length_beyond_buffer' | 'invalid_field',
  ) {
    super(message);
  }
}

type Json = Record<string, unknown>;

const utf8 = new TextDecoder('utf-8', { fatal: true });
const HEX: string[] = [];
for (let i = 0; i < 256; i++) HEX.push(i.toString(16).padStart(2, '0'));

/** Deeper AnyValue nesting than this is refused (a crafted record must not exhaust the stack). */
const MAX_DEPTH = 32;

class Reader {
  pos: number;
  /** The same bytes as a Buffer, for its fast UTF-8 decoder. */
  readonly text: Buffer;
  constructor(
    readonly buf: Uint8Array,
    start: number,
    /** End of the message being read (nested lengths must fit inside it). */
    public end: number,
  ) {
    this.pos = start;
    this.text = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /** A varint up to 2^53 as a number; larger ones (only int64 attribute values) via varint64. */
  varint(): number {
    const buf = this.buf;
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new OtlpProtoError(`truncated varint at byte ${this.pos}`, 'truncated');
      const b = buf[this.pos++]!;
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
    throw new OtlpProtoError(`varint longer than 10 bytes at byte ${this.pos}`, 'invalid_field');
  }

  /** An int64 varint, exact, as a decimal string (negative values are ten-byte two's complement). */
  int64(): string {
    const start = this.pos;
    let v = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new OtlpProtoError(`truncated varint at byte ${start}`, 'truncated');
      const b = this.buf[this.pos++]!;
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asIntN(64, v).toString();
      shift += 7n;
    }
    throw new OtlpProtoError(`varint longer than 10 bytes at byte ${start}`, 'invalid_field');
  }

  fixed64String(): string {
    if (this.pos + 8 > this.end)
      throw new OtlpProtoError(`truncated fixed64 at byte ${this.pos}`, 'truncated');
    const b = this.buf;
    const p = this.pos;
    const lo = (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24)) >>> 0;
    const hi = (b[p + 4]! | (b[p + 5]! << 8) | (b[p + 6]! << 16) | (b[p + 7]! << 24)) >>> 0;
    this.pos += 8;
    if (hi < 0x200000) return String(hi * 4294967296 + lo);
    return ((BigInt(hi) << 32n) | BigInt(lo)).toString();
  }

  fixed32(): number {
    if (this.pos + 4 > this.end)
      throw new OtlpProtoError(`truncated fixed32 at byte ${this.pos}`, 'truncated');
    const b = this.buf;
    const p = this.pos;
    this.pos += 4;
    return (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24)) >>> 0;
  }

  double(): number {
    if (this.pos + 8 > this.end)
      throw new OtlpProtoError(`truncated double at byte ${this.pos}`, 'truncated');
    const view = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 8);
    this.pos += 8;
    return view.getFloat64(0, true);
  }

  /** The end offset of a length-delimited field whose length is at the cursor. */
  lengthEnd(): number {
    const at = this.pos;
    const len = this.varint();
    const end = this.pos + len;
    if (end > this.end) {
      throw new OtlpProtoError(
        `length ${len} at byte ${at} runs past the end of its message (byte ${this.end})`,
        'length_beyond_buffer',
      );
    }
    return end;
  }

  string(): string {
    const end = this.lengthEnd();
    const start = this.pos;
    this.pos = end;
    if (end - start <= 16) {
      let s = '';
      const b = this.buf;
      for (let i = start; i < end; i++) {
        const c = b[i]!;
        if (c >= 0x80) return this.utf8(start, end);
        s += String.fromCharCode(c);
      }
      return s;
    }
    return this.utf8(start, end);
  }

  /** UTF-8 text, strict: Buffer's fast decoder, and the fatal one only to tell a real U+FFFD from a bad byte. */
  private utf8(start: number, end: number): string {
    const s = this.text.toString('utf8', start, end);
    if (s.includes('\uFFFD')) {
      try {
        return utf8.decode(this.buf.subarray(start, end));
      } catch {
        throw new OtlpProtoError(`string at byte ${start} is not valid UTF-8`, 'invalid_field');
      }
    }
    return s;
  }

  bytes(): Uint8Array {
    const end = this.lengthEnd();
    const out = this.buf.subarray(this.pos, end);
    this.pos = end;
    return out;
  }

  /** An id of `size` bytes as hex; empty bytes give ''. */
  id(size: number, field: string): string {
    const end = this.lengthEnd();
    const len = end - this.pos;
    if (len === 0) return '';
    if (len !== size) {
      throw new OtlpProtoError(`${field} has ${len} bytes, expected ${size}`, 'invalid_field');
    }
    let s = '';
    for (let i = this.pos; i < end; i++) s += HEX[this.buf[i]!]!;
    this.pos = end;
    return s;
  }

  /** Skips a field of an unknown number by its wire type. */
  skip(wire: number): void {
    switch (wire) {
      case 0:
        this.varint();
        return;
      case 1:
        if (this.pos + 8 > this.end)
          throw new OtlpProtoError(`truncated fixed64 at byte ${this.pos}`, 'truncated');
        this.pos += 8;
        return;
      case 2:
        this.pos = this.lengthEnd();
        return;
      case 5:
        if (this.pos + 4 > this.end)
          throw new OtlpProtoError(`truncated fixed32 at byte ${this.pos}`, 'truncated');
        this.pos += 4;
        return;
      default:
        throw new OtlpProtoError(`wire type ${wire} at byte ${this.pos} is not supported`, 'bad_wire_type');
    }
  }
}

/** Reads the next tag; checks that the field's wire type is the expected one. */
function expect(r: Reader, wire: number, want: number, field: string): void {
  if (wire !== want) {
    throw new OtlpProtoError(
      `${field} has wire type ${wire}, expected ${want} (byte ${r.pos})`,
      'bad_wire_type',
    );
  }
}

/** Runs `field(fieldNumber, wireType)` for each field of the message ending at `end`. */
function fields(r: Reader, end: number, field: (no: number, wire: number) => boolean): void {
  const outer = r.end;
  r.end = end;
  try {
    while (r.pos < end) {
      const tag = r.varint();
      const no = Math.floor(tag / 8);
      const wire = tag & 7;
      if (no === 0) throw new OtlpProtoError(`field number 0 at byte ${r.pos}`, 'invalid_field');
      if (!field(no, wire)) r.skip(wire);
    }
  } finally {
    r.end = outer;
  }
}

function anyValue(r: Reader, end: number, depth: number): Json {
  if (depth > MAX_DEPTH) throw new OtlpProtoError(`AnyValue nests deeper than ${MAX_DEPTH}`, 'invalid_field');
  let out: Json = {};
  fields(r, end, (no, wire) => {
    switch (no) {
      case 1:
        expect(r, wire, 2, 'AnyValue.string_value');
        out = { stringValue: r.string() };
        return true;
      case 2:
        expect(r, wire, 0, 'AnyValue.bool_value');
        out = { boolValue: r.varint() !== 0 };
        return true;
      case 3:
        expect(r, wire, 0, 'AnyValue.int_value');
        out = { intValue: r.int64() };
        return true;
      case 4: {
        expect(r, wire, 1, 'AnyValue.double_value');
        const d = r.double();
        out = { doubleValue: Number.isFinite(d) ? d : String(d) };
        return true;
      }
      case 5: {
        expect(r, wire, 2, 'AnyValue.array_value');
        const e = r.lengthEnd();
        const values: Json[] = [];
        fields(r, e, (n, w) => {
          if (n !== 1) return false;
          expect(r, w, 2, 'ArrayValue.values');
          values.push(anyValue(r, r.lengthEnd(), depth + 1));
          return true;
        });
        out = { arrayValue: { values } };
        return true;
      }
      case 6: {
        expect(r, wire, 2, 'AnyValue.kvlist_value');
        const e = r.lengthEnd();
        const values: Json[] = [];
        fields(r, e, (n, w) => {
          if (n !== 1) return false;
          expect(r, w, 2, 'KeyValueList.values');
          values.push(keyValue(r, r.lengthEnd(), depth + 1));
          return true;
        });
        out = { kvlistValue: { values } };
        return true;
      }
      case 7:
        expect(r, wire, 2, 'AnyValue.bytes_value');
        out = { bytesValue: Buffer.from(r.bytes()).toString('base64') };
        return true;
      default:
        return false;
    }
  });
  return out;
}

function keyValue(r: Reader, end: number, depth: number): Json {
  const kv: Json = { key: '', value: {} };
  fields(r, end, (no, wire) => {
    if (no === 1) {
      expect(r, wire, 2, 'KeyValue.key');
      kv.key = r.string();
      return true;
    }
    if (no === 2) {
      expect(r, wire, 2, 'KeyValue.value');
      kv.value = anyValue(r, r.lengthEnd(), depth);
      return true;
    }
    return false;
  });
  return kv;
}

function attribute(r: Reader, wire: number, list: Json[], field: string): void {
  expect(r, wire, 2, field);
  list.push(keyValue(r, r.lengthEnd(), 0));
}

function uint(r: Reader, wire: number, field: string): number {
  expect(r, wire, 0, field);
  return r.varint();
}

function spanEvent(r: Reader, end: number): Json {
  const e: Json = { timeUnixNano: '0', name: '', attributes: [], droppedAttributesCount: 0 };
  const attrs = e.attributes as Json[];
  fields(r, end, (no, wire) => {
    switch (no) {
      case 1:
        expect(r, wire, 1, 'Event.time_unix_nano');
        e.timeUnixNano = r.fixed64String();
        return true;
      case 2:
        expect(r, wire, 2, 'Event.name');
        e.name = r.string();
        return true;
      case 3:
        attribute(r, wire, attrs, 'Event.attributes');
        return true;
      case 4:
        e.droppedAttributesCount = uint(r, wire, 'Event.dropped_attributes_count');
        return true;
      default:
        return false;
    }
  });
  return e;
}

function spanLink(r: Reader, end: number): Json {
  const l: Json = { traceId: '', spanId: '', traceState: '', attributes: [], droppedAttributesCount: 0 };
  const attrs = l.attributes as Json[];
  fields(r, end, (no, wire) => {
    switch (no) {
      case 1:
        expect(r, wire, 2, 'Link.trace_id');
        l.traceId = r.id(16, 'Link.trace_id');
        return true;
      case 2:
        expect(r, wire, 2, 'Link.span_id');
        l.spanId = r.id(8, 'Link.span_id');
        return true;
      case 3:
        expect(r, wire, 2, 'Link.trace_state');
        l.traceState = r.string();
        return true;
      case 4:
        attribute(r, wire, attrs, 'Link.attributes');
        return true;
      case 5:
        l.droppedAttributesCount = uint(r, wire, 'Link.dropped_attributes_count');
        return true;
      case 6:
        expect(r, wire, 5, 'Link.flags');
        l.flags = r.fixed32();
        return true;
      default:
        return false;
    }
  });
  return l;
}

function status(r: Reader, end: number): Json {
  const s: Json = { code: 0, message: '' };
  fields(r, end, (no, wire) => {
    if (no === 2) {
      expect(r, wire, 2, 'Status.message');
      s.message = r.string();
      return true;
    }
    if (no === 3) {
      s.code = uint(r, wire, 'Status.code');
      return true;
    }
    return false;
  });
  return s;
}

function span(r: Reader, end: number): Json {
  const s: Json = {
    traceId: '',
    spanId: '',
    traceState: '',
    parentSpanId: '',
    name: '',
    kind: 0,
    startTimeUnixNano: '0',
    endTimeUnixNano: '0',
    attributes: [],
    droppedAttributesCount: 0,
    events: [],
    droppedEventsCount: 0,
    links: [],
    droppedLinksCount: 0,
    status: { code: 0, message: '' },
  };
  const attrs = s.attributes as Json[];
  const events = s.events as Json[];
  const links = s.links as Json[];
  fields(r, end, (no, wire) => {
    switch (no) {
      case 1:
        expect(r, wire, 2, 'Span.trace_id');
        s.traceId = r.id(16, 'Span.trace_id');
        return true;
      case 2:
        expect(r, wire, 2, 'Span.span_id');
        s.spanId = r.id(8, 'Span.span_id');
        return true;
      case 3:
        expect(r, wire, 2, 'Span.trace_state');
        s.traceState = r.string();
        return true;
      case 4:
        expect(r, wire, 2, 'Span.parent_span_id');
        s.parentSpanId = r.id(8, 'Span.parent_span_id');
        return true;
      case 5:
        expect(r, wire, 2, 'Span.name');
        s.name = r.string();
        return true;
      case 6:
        s.kind = uint(r, wire, 'Span.kind');
        return true;
      case 7:
        expect(r, wire, 1, 'Span.start_time_unix_nano');
        s.startTimeUnixNano = r.fixed64String();
        return true;
      case 8:
        expect(r, wire, 1, 'Span.end_time_unix_nano');
        s.endTimeUnixNano = r.fixed64String();
        return true;
      case 9:
        attribute(r, wire, attrs, 'Span.attributes');
        return true;
      case 10:
        s.droppedAttributesCount = uint(r, wire, 'Span.dropped_attributes_count');
        return true;
      case 11:
        expect(r, wire, 2, 'Span.events');
        events.push(spanEvent(r, r.lengthEnd()));
        return true;
      case 12:
        s.droppedEventsCount = uint(r, wire, 'Span.dropped_events_count');
        return true;
      case 13:
        expect(r, wire, 2, 'Span.links');
        links.push(spanLink(r, r.lengthEnd()));
        return true;
      case 14:
        s.droppedLinksCount = uint(r, wire, 'Span.dropped_links_count');
        return true;
      case 15:
        expect(r, wire, 2, 'Span.status');
        s.status = status(r, r.lengthEnd());
        return true;
      case 16:
        expect(r, wire, 5, 'Span.flags');
        s.flags = r.fixed32();
        return true;
      default:
        return false;
    }
  });
  return s;
}

function scope(r: Reader, end: number): Json {
  const sc: Json = { name: '', version: '', attributes: [], droppedAttributesCount: 0 };
  const attrs = sc.attributes as Json[];
  fields(r, end, (no, wire) => {
    switch (no) {
      case 1:
        expect(r, wire, 2, 'InstrumentationScope.name');
        sc.name = r.string();
        return true;
      case 2:
        expect(r, wire, 2, 'InstrumentationScope.version');
        sc.version = r.string();
        return true;
      case 3:
        attribute(r, wire, attrs, 'InstrumentationScope.attributes');
        return true;
      case 4:
        sc.droppedAttributesCount = uint(r, wire, 'InstrumentationScope.dropped_attributes_count');
        return true;
      default:
        return false;
    }
  });
  return sc;
}

function scopeSpans(r: Reader, end: number): Json {
  const ss: Json = { spans: [], schemaUrl: '' };
  const spans = ss.spans as Json[];
  fields(r, end, (no, wire) => {
    switch (no) {
      case 1:
        expect(r, wire, 2, 'ScopeSpans.scope');
        ss.scope = scope(r, r.lengthEnd());
        return true;
      case 2:
        expect(r, wire, 2, 'ScopeSpans.spans');
        spans.push(span(r, r.lengthEnd()));
        return true;
      case 3:
        expect(r, wire, 2, 'ScopeSpans.schema_url');
        ss.schemaUrl = r.string();
        return true;
      default:
        return false;
    }
  });
  return ss;
}

function resource(r: Reader, end: number): Json {
  const res: Json = { attributes: [], droppedAttributesCount: 0 };
  const attrs = res.attributes as Json[];
  fields(r, end, (no, wire) => {
    if (no === 1) {
      attribute(r, wire, attrs, 'Resource.attributes');
      return true;
    }
    if (no === 2) {
      res.droppedAttributesCount = uint(r, wire, 'Resource.dropped_attributes_count');
      return true;
    }
    return false;
  });
  return res;
}

function resourceSpans(r: Reader, end: number): Json {
  const rs: Json = { resource: { attributes: [], droppedAttributesCount: 0 }, scopeSpans: [], schemaUrl: '' };
  const list = rs.scopeSpans as Json[];
  fields(r, end, (no, wire) => {
    switch (no) {
      case 1:
        expect(r, wire, 2, 'ResourceSpans.resource');
        rs.resource = resource(r, r.lengthEnd());
        return true;
      case 2:
        expect(r, wire, 2, 'ResourceSpans.scope_spans');
        list.push(scopeSpans(r, r.lengthEnd()));
        return true;
      case 3:
        expect(r, wire, 2, 'ResourceSpans.schema_url');
        rs.schemaUrl = r.string();
        return true;
      default:
        return false;
    }
  });
  return rs;
}

/**
 * Decodes an `ExportTraceServiceRequest` into its OTLP/JSON shape (`{ resourceSpans: [...] }`).
 * Throws OtlpProtoError when the bytes are not one.
 */
export function decodeOtlpTraces(data: Uint8Array): { resourceSpans: Json[] } {
  const r = new Reader(data, 0, data.byteLength);
  const out: Json[] = [];
  fields(r, data.byteLength, (no, wire) => {
    if (no !== 1) return false;
    expect(r, wire, 2, 'ExportTraceServiceRequest.resource_spans');
    out.push(resourceSpans(r, r.lengthEnd()));
    return true;
  });
  return { resourceSpans: out };
}

/**
 * True when a record should be read as OTLP protobuf: it starts with 0x0a (field 1, resource_spans,
 * length-delimited) and is not JSON text (JSON may start with a newline too: then the first character
 * after the white space is `{` or `[`).
 */
export function looksLikeOtlpProto(data: Uint8Array): boolean {
  if (data.byteLength < 2 || data[0] !== 0x0a) return false;
  for (let i = 1; i < data.byteLength; i++) {
    const c = data[i]!;
    if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) continue;
    return c !== 0x7b && c !== 0x5b;
  }
  return false;
}
