// segcode_common.wgsl -- what the segment coder's WGSL decoder (segcode.wgsl) and encoder (segcode_encode.wgsl)
// share: the format's constants (segcode_core.h), a channel's table layout, the dispatch's shape. The host
// (seqkv_edge/codecs/segcode_wgpu.py) puts it before either shader's source; WGSL has no include.

const CELLS: u32 = 2048u;           // SEGC2_CELLS
const CHANNELS: u32 = 64u;          // SEGC2_CHANNELS
const LANES: u32 = 16u;             // SEGC2_LANES
const SCALE_BITS: u32 = 12u;        // SEGC_SCALE_BITS
const RANS_L: u32 = 65536u;         // SEGC_RANS_L
const KMAX: u32 = 48u;              // SEGC2_KMAX
// a channel's table: n_sym, the escape's symbol (2 * KMAX: none), cum[0 .. 127] (TOTFREQ from cum[n_sym] on)
const MODEL_WORDS: u32 = 130u;
const CUM_AT: u32 = 2u;
const GROUPS_PER_STEP: u32 = 1024u; // about 33 loop iterations per group
// status of a segment, the first and the last (each shader adds its own)
const STARTING: u32 = 0u;
const DONE: u32 = 2u;

struct Shape {
    n_rows: u32,      // rows of this dispatch (whole cell blocks of the tensor, plus its last partial one)
    n_channels: u32,
    n_segments: u32,  // segments of this dispatch
    n_chblocks: u32,  // segments per cell block
}

// where segment seg of the dispatch lies: its first cell and channel, its rows and channels
struct Extent {
    cell0: u32,
    ch0: u32,
    h: u32,
    w: u32,
}

fn extent(seg: u32) -> Extent {
    let cell0 = (seg / shape.n_chblocks) * CELLS;
    let ch0 = (seg % shape.n_chblocks) * CHANNELS;
    return Extent(cell0, ch0, min(shape.n_rows - cell0, CELLS), min(shape.n_channels - ch0, CHANNELS));
}
