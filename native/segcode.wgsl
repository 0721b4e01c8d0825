// segcode.wgsl -- the segment coder's format-2 decoder (segcode_core.h: segc2_decode_block) as a WebGPU compute
// shader, run by seqkv_edge/codecs/segcode_wgpu.py (wgpu: Metal on macOS, Vulkan elsewhere).
//
// One invocation decodes one segment, as one CUDA thread does (segcode_cuda.cu): the 16 lanes of a segment
// share one word stream read in a fixed order, so splitting a segment across invocations would need a prefix
// count per group and two barriers per 16 values; segments are the format's unit of parallelism.
// A dispatch decodes at most GROUPS_PER_STEP groups of each segment and keeps the lanes' states in `progress`;
// the host dispatches again until every segment is done. So no invocation runs long (a GPU watchdog) or loops
// more than 65535 times (Mesa's llvmpipe, lavapipe's compiler, ends any invocation's loops past that count).
//
// Integer arithmetic only (quantizing and dequantizing stay on the host, in the C core's float arithmetic),
// no atomics, no shared memory: each invocation writes its own segment's indices and progress, so the result
// does not depend on the hardware's scheduling. Every read of the stream is bounds-checked against the segment's
// byte range: a damaged body gives status CORRUPT, never a read outside the stream.
//
// The host parses the stream's header, table section and size table (the C core's segc2_parse) and builds
// each channel's symbol table (segc2_freqs); this shader gets the segment bodies and those tables. The constants
// and the dispatch's shape it shares with the encoder come first (segcode_common.wgsl).

const TOTFREQ: u32 = 4096u;         // SEGC_TOTFREQ
const MAX_ABS: u32 = 32767u;        // SEGC_MAX_ABS
// progress of a segment: the lanes' states, the next byte, the next value, its row and column
const PROGRESS_WORDS: u32 = 20u;
const AT: u32 = 16u;
const BASE: u32 = 17u;
const ROW: u32 = 18u;
const COL: u32 = 19u;
// status of a segment
const DECODING: u32 = 1u;
const CORRUPT: u32 = 3u;

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> stream: array<u32>;        // the bodies' bytes, little-endian words
@group(0) @binding(2) var<storage, read> bounds: array<u32>;        // n_segments + 1 byte offsets into stream
@group(0) @binding(3) var<storage, read> models: array<u32>;        // MODEL_WORDS per channel
@group(0) @binding(4) var<storage, read_write> indices: array<i32>; // n_rows x n_channels, row-major, zeroed
@group(0) @binding(5) var<storage, read_write> status: array<u32>;  // per segment
@group(0) @binding(6) var<storage, read_write> progress: array<u32>; // PROGRESS_WORDS per segment

var<private> x: array<u32, 16>;     // the lanes' decoder states
var<private> sym: array<u32, 16>;   // a group's symbols
var<private> col: array<u32, 16>;   // and their channels within the segment
var<private> at: u32;               // the next unread byte
var<private> stop: u32;             // the segment's end
var<private> failed: bool;

fn byte_at(i: u32) -> u32 {
    return (stream[i >> 2u] >> ((i & 3u) << 3u)) & 0xffu;
}

fn load_le32(i: u32) -> u32 {
    return byte_at(i) | (byte_at(i + 1u) << 8u) | (byte_at(i + 2u) << 16u) | (byte_at(i + 3u) << 24u);
}

// segc2_dec_renorm: the next word when the state fell below RANS_L; a body without one fails
fn renorm(v: u32) -> u32 {
    if (v >= RANS_L) {
        return v;
    }
    if (stop - at < 2u) {
        failed = true;
        return v;
    }
    let word = byte_at(at) | (byte_at(at + 1u) << 8u);
    at += 2u;
    return (v << 16u) | word;
}

fn cum(model: u32, s: u32) -> u32 {
    return models[model + CUM_AT + s];
}

// the symbol whose slots hold `slot`: the last s with cum[s] <= slot, by a binary search without a loop
fn find_symbol(model: u32, slot: u32) -> u32 {
    var s = select(0u, 64u, cum(model, 64u) <= slot);
    s += select(0u, 32u, cum(model, s + 32u) <= slot);
    s += select(0u, 16u, cum(model, s + 16u) <= slot);
    s += select(0u, 8u, cum(model, s + 8u) <= slot);
    s += select(0u, 4u, cum(model, s + 4u) <= slot);
    s += select(0u, 2u, cum(model, s + 2u) <= slot);
    s += select(0u, 1u, cum(model, s + 1u) <= slot);
    return s;
}

// segc2_symbol_value: 0, +1, -1, +2, -2, ...
fn symbol_value(s: u32) -> i32 {
    let half = i32((s + 1u) >> 1u);
    return select(-half, half, (s & 1u) != 0u);
}

// segc2_dec_escape: pass 2 of lane j, the value from its raw bits
fn escape_value(j: u32) -> i32 {
    let head = x[j] & 31u;
    let len = head >> 1u;
    var v = renorm(x[j] >> 5u);
    var e = 1u;
    if (len != 0u) {
        if (len > 14u) {
            failed = true;
            x[j] = v;
            return 0;
        }
        e = (1u << len) | (v & ((1u << len) - 1u));
        v = renorm(v >> len);
    }
    x[j] = v;
    if (e + KMAX - 1u > MAX_ABS) {
        failed = true;
        return 0;
    }
    let m = i32(e + KMAX - 1u);
    return select(m, -m, (head & 1u) != 0u);
}

// the first step of a segment: its byte range, an empty body for all-zero channels, the lanes' initial states
fn start_segment(ch0: u32, w: u32) -> u32 {
    if (at > stop || stop > arrayLength(&stream) * 4u) {
        return CORRUPT;
    }
    var coded = false;
    for (var c = 0u; c < w; c++) {
        coded = coded || models[(ch0 + c) * MODEL_WORDS] > 1u; // k > 1: more than the one symbol 0
    }
    if (!coded) { // every channel all zeros: an empty body, and the indices are already zero
        return select(CORRUPT, DONE, stop == at);
    }
    if (stop - at < 4u * LANES) {
        return CORRUPT;
    }
    for (var s = 0u; s < LANES; s++) {
        x[s] = load_le32(at);
        at += 4u;
        if (x[s] < RANS_L) {
            return CORRUPT;
        }
    }
    return DECODING;
}

// up to GROUPS_PER_STEP groups of the segment, values column by column (value i is row i % h of column i / h,
// coded by lane i % LANES); DECODING, DONE or CORRUPT
fn decode_groups(seg: u32, cell0: u32, ch0: u32, h: u32, w: u32) -> u32 {
    let saved = seg * PROGRESS_WORDS;
    let n = h * w;
    var base = progress[saved + BASE];
    var r = progress[saved + ROW];
    var c = progress[saved + COL];
    let last = min(n, base + GROUPS_PER_STEP * LANES);
    for (; base < last && !failed; base += LANES) {
        let m = min(n - base, LANES);
        var rr = r;
        var cc = c;
        var escaped = false;
        for (var j = 0u; j < m; j++) { // pass 1: the group's symbols, lane by lane
            let model = (ch0 + cc) * MODEL_WORDS;
            let v = x[j];
            let slot = v & (TOTFREQ - 1u);
            let s = find_symbol(model, slot);
            let start = cum(model, s);
            x[j] = renorm((cum(model, s + 1u) - start) * (v >> SCALE_BITS) + slot - start);
            sym[j] = s;
            col[j] = cc;
            escaped = escaped || s == models[model + 1u];
            rr++;
            if (rr == h) {
                rr = 0u;
                cc++;
            }
        }
        for (var j = 0u; j < m; j++) { // pass 2: raw bits of the escaped ones, lane by lane
            var value = symbol_value(sym[j]);
            if (escaped && sym[j] == models[(ch0 + col[j]) * MODEL_WORDS + 1u]) {
                value = escape_value(j);
            }
            indices[(cell0 + r) * shape.n_channels + ch0 + c] = value;
            r++;
            if (r == h) {
                r = 0u;
                c++;
            }
        }
    }
    progress[saved + BASE] = base;
    progress[saved + ROW] = r;
    progress[saved + COL] = c;
    if (failed) {
        return CORRUPT;
    }
    if (base < n) {
        return DECODING;
    }
    if (at != stop) { // bytes left over
        return CORRUPT;
    }
    for (var s = 0u; s < LANES; s++) {
        if (x[s] != RANS_L) {
            return CORRUPT;
        }
    }
    return DONE;
}

fn step_segment(seg: u32) -> u32 {
    let e = extent(seg);
    let saved = seg * PROGRESS_WORDS;
    stop = bounds[seg + 1u];
    failed = false;
    var state = status[seg];
    if (state == STARTING) {
        at = bounds[seg];
        state = start_segment(e.ch0, e.w);
    } else {
        at = progress[saved + AT];
        for (var s = 0u; s < LANES; s++) {
            x[s] = progress[saved + s];
        }
    }
    if (state != DECODING) {
        return state;
    }
    state = decode_groups(seg, e.cell0, e.ch0, e.h, e.w);
    progress[saved + AT] = at;
    for (var s = 0u; s < LANES; s++) {
        progress[saved + s] = x[s];
    }
    return state;
}

// one step of every unfinished segment of the dispatch
@compute @workgroup_size(1)
fn decode_segments(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < shape.n_segments && status[id.x] < DONE) {
        status[id.x] = step_segment(id.x);
    }
}
