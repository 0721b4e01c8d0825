// segcode_encode.wgsl -- the segment coder's format-2 encoder (segcode_core.h: segc2_encode_block) as a WebGPU
// compute shader, run by seqkv_edge/codecs/segcode_wgpu.py beside the decoder (segcode.wgsl).
//
// One invocation codes one segment, as the decoder decodes one: rANS codes its groups last to first, each in the
// reverse of the decoder's two passes (the escapes' raw bits, then every lane's symbol). The words go downwards
// from the end of the segment's own region of `words` (the format's bound: three u16 words a value); the lanes'
// final states are the body's first bytes, which the host reads from `progress`. A dispatch codes at most
// GROUPS_PER_STEP groups of each segment and keeps the lanes' states there, as the decoder does: no invocation runs
// long, or loops past the 65535 iterations after which Mesa's llvmpipe ends an invocation's loops.
//
// The C encoder divides through 64-bit reciprocals; WGSL has no u64, and u32 division gives the same exact
// quotient. No atomics, no shared memory: each invocation writes only its own region, status and progress.
//
// The host quantizes and fits each channel's model with the C core (segcode.fit_models), builds the channels'
// tables as for the decoder (segc2_freqs), and packs the stream: the head, the size table, then each body (the
// lanes' states, then its words). The constants and the dispatch's shape it shares with the decoder come first
// (segcode_common.wgsl).

// progress of a segment: the lanes' states, the groups still to code, the words written so far
const PROGRESS_WORDS: u32 = 18u;
const GROUPS_LEFT: u32 = 16u;
const WORDS: u32 = 17u;
// status of a segment
const ENCODING: u32 = 1u;
const EMPTY: u32 = 3u;              // every channel all zeros: an empty body

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> indices: array<i32>;        // n_rows x n_channels, row-major
@group(0) @binding(2) var<storage, read> regions: array<u32>;        // n_segments + 1 offsets into words (u32s)
@group(0) @binding(3) var<storage, read> models: array<u32>;         // MODEL_WORDS per channel
@group(0) @binding(4) var<storage, read_write> words: array<u32>;    // the segments' regions, zeroed
@group(0) @binding(5) var<storage, read_write> status: array<u32>;   // per segment
@group(0) @binding(6) var<storage, read_write> progress: array<u32>; // PROGRESS_WORDS per segment

var<private> x: array<u32, 16>;     // the lanes' encoder states
var<private> value: array<i32, 16>; // a group's indices
var<private> col: array<u32, 16>;   // and their channels within the segment
var<private> top: u32;              // the byte past the segment's region
var<private> n_words: u32;          // words written below top

// the next word, below the previous one (the region is zeroed, each half of a u32 written once)
fn put_word(v: u32) {
    n_words++;
    let at = top - 2u * n_words;
    words[at >> 2u] |= (v & 0xffffu) << ((at & 2u) << 3u);
}

// segc2_enc_put: a word out when the state would overflow, then the symbol of [start, start + freq)
fn put_symbol(j: u32, start: u32, freq: u32) {
    var v = x[j];
    if ((v >> (32u - SCALE_BITS)) >= freq) {
        put_word(v);
        v >>= 16u;
    }
    x[j] = ((v / freq) << SCALE_BITS) + v % freq + start;
}

// segc_enc_put_raw: n_bits raw bits (1 .. 14)
fn put_raw(j: u32, bits: u32, n_bits: u32) {
    var v = x[j];
    if ((v >> (32u - n_bits)) != 0u) {
        put_word(v);
        v >>= 16u;
    }
    x[j] = (v << n_bits) | bits;
}

// segc2_enc_escape: the raw bits of a magnitude >= KMAX, in the reverse of the decoder's reads
fn put_escape(j: u32, v: i32) {
    let e = u32(abs(v)) - KMAX + 1u;
    let len = firstLeadingBit(e);
    if (len != 0u) {
        put_raw(j, e - (1u << len), len);
    }
    put_raw(j, select(0u, 1u, v < 0) | (len << 1u), 5u);
}

// k of a channel's model from its symbol count (2k - 1, or 2k with the escape)
fn model_k(model: u32) -> u32 {
    return (models[model] + 1u) >> 1u;
}

// segc2_symbol: 0, +1, -1, +2, -2, ..., the escape 2k - 1
fn symbol(v: i32, k: u32) -> u32 {
    let m = u32(abs(v));
    return select(2u * m - select(0u, 1u, v > 0), 2u * k - 1u, m >= k);
}

// up to GROUPS_PER_STEP groups of the segment, last to first; values column by column (value i is row i % h of
// column i / h, coded by lane i % LANES); ENCODING or DONE
fn encode_groups(seg: u32, cell0: u32, ch0: u32, h: u32, w: u32) -> u32 {
    let saved = seg * PROGRESS_WORDS;
    let n = h * w;
    var left = progress[saved + GROUPS_LEFT];
    let last = left - min(left, GROUPS_PER_STEP);
    for (; left > last; left--) {
        let base = (left - 1u) * LANES;
        let m = min(n - base, LANES);
        var r = (base + m - 1u) % h;
        var c = (base + m - 1u) / h;
        for (var j = m; j > 0u; j--) { // pass 2 reversed: the group's values, the escapes' raw bits
            let v = indices[(cell0 + r) * shape.n_channels + ch0 + c];
            value[j - 1u] = v;
            col[j - 1u] = c;
            if (u32(abs(v)) >= model_k((ch0 + c) * MODEL_WORDS)) {
                put_escape(j - 1u, v);
            }
            if (r == 0u) {
                r = h;
                c--;
            }
            r--;
        }
        for (var j = m; j > 0u; j--) { // pass 1 reversed: every lane's symbol
            let model = (ch0 + col[j - 1u]) * MODEL_WORDS;
            let s = symbol(value[j - 1u], model_k(model));
            let start = models[model + CUM_AT + s];
            put_symbol(j - 1u, start, models[model + CUM_AT + s + 1u] - start);
        }
    }
    progress[saved + GROUPS_LEFT] = left;
    return select(ENCODING, DONE, left == 0u);
}

fn step_segment(seg: u32) -> u32 {
    let e = extent(seg);
    let saved = seg * PROGRESS_WORDS;
    top = regions[seg + 1u] * 4u;
    if (status[seg] == STARTING) {
        var coded = false;
        for (var c = 0u; c < e.w; c++) {
            coded = coded || models[(e.ch0 + c) * MODEL_WORDS] > 1u; // k > 1: more than the one symbol 0
        }
        if (!coded) {
            return EMPTY;
        }
        for (var s = 0u; s < LANES; s++) {
            x[s] = RANS_L;
        }
        n_words = 0u;
        progress[saved + GROUPS_LEFT] = (e.h * e.w + LANES - 1u) / LANES;
    } else {
        for (var s = 0u; s < LANES; s++) {
            x[s] = progress[saved + s];
        }
        n_words = progress[saved + WORDS];
    }
    let state = encode_groups(seg, e.cell0, e.ch0, e.h, e.w);
    for (var s = 0u; s < LANES; s++) {
        progress[saved + s] = x[s];
    }
    progress[saved + WORDS] = n_words;
    return state;
}

// one step of every unfinished segment of the dispatch
@compute @workgroup_size(1)
fn encode_segments(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < shape.n_segments && status[id.x] < DONE) {
        status[id.x] = step_segment(id.x);
    }
}
