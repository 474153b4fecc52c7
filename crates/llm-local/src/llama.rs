//! The llama-architecture forward pass for CPU decoding (SmolLM2, Llama, Mistral-style GGUF models).
//!
//! candle reads the GGUF (header, metadata, tensors); the forward pass is ours, because decoding a small
//! model is bound by memory traffic and per-operation overhead: weights stay in their 4-bit blocks, every
//! buffer is allocated once per conversation, the KV cache grows in place (no copies per token), grouped
//! query attention reads the shared K/V heads directly, and the matrix products of a layer are split over
//! all cores with candle's spinning barrier pool. Prompts run as batches: each weight row is read once for
//! the whole chunk.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::LocalError;
use crate::kernels::{BLOCK, BlockQ8, Matrix, OutRows, quantize_row};

#[derive(Clone, Debug)]
pub struct Config {
    pub layers: usize,
    pub dim: usize,
    pub ff: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub context: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

pub struct Model {
    pub cfg: Config,
    embed: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// The output projection (the embedding matrix when the model ties them).
    output: Option<Matrix>,
    /// cos/sin of the rotary embedding, `[position][head_dim / 2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

fn meta_u32(ct: &Content, key: &str) -> Result<usize, LocalError> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .ok_or_else(|| LocalError::Model(format!("missing {key}")))
}

fn meta_f32(ct: &Content, key: &str) -> Option<f32> {
    match ct.metadata.get(key) {
        Some(Value::F32(v)) => Some(*v),
        Some(Value::F64(v)) => Some(*v as f32),
        _ => None,
    }
}

impl Model {
    /// Reads a llama-architecture GGUF. Q4_1 and Q8_0 weights are used as stored; other types are
    /// converted to Q8_0 on load (candle dequantizes them).
    pub fn load<R: std::io::Read + std::io::Seek>(
        ct: &Content,
        r: &mut R,
        context: usize,
    ) -> Result<Model, LocalError> {
        let dim = meta_u32(ct, "llama.embedding_length")?;
        let heads = meta_u32(ct, "llama.attention.head_count")?;
        let kv_heads = meta_u32(ct, "llama.attention.head_count_kv").unwrap_or(heads);
        let head_dim = meta_u32(ct, "llama.rope.dimension_count").unwrap_or(dim / heads.max(1));
        let cfg = Config {
            layers: meta_u32(ct, "llama.block_count")?,
            dim,
            ff: meta_u32(ct, "llama.feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            vocab: 0,
            eps: meta_f32(ct, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_base: meta_f32(ct, "llama.rope.freq_base").unwrap_or(10_000.0),
            context,
        };
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || head_dim * heads != dim
            || !head_dim.is_multiple_of(2)
        {
            return Err(LocalError::Model(format!(
                "unsupported attention shape: {heads} heads, {kv_heads} KV heads, {head_dim} per head, {dim} wide"
            )));
        }
        let device = candle_core::Device::Cpu;
        let matrix = |r: &mut R, name: &str| -> Result<Matrix, LocalError> {
            let t = ct.tensor(r, name, &device)?;
            let dims = t.shape().dims().to_vec();
            let [rows, cols] = match dims.as_slice() {
                [rows, cols] => [*rows, *cols],
                _ => return Err(LocalError::Model(format!("{name}: expected a matrix, got {dims:?}"))),
            };
            let (q4_1, t) = match t.dtype() {
                GgmlDType::Q4_1 => (true, t),
                GgmlDType::Q8_0 => (false, t),
                _ => (
                    false,
                    candle_core::quantized::QTensor::quantize(&t.dequantize(&device)?, GgmlDType::Q8_0)?,
                ),
            };
            let bytes = t.data()?;
            Matrix::from_bytes(rows, cols, q4_1, &bytes)
                .ok_or_else(|| LocalError::Model(format!("{name}: unexpected size or block layout")))
        };
        let vector = |r: &mut R, name: &str, len: usize| -> Result<Vec<f32>, LocalError> {
            let v = ct
                .tensor(r, name, &device)?
                .dequantize(&device)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if v.len() != len {
                return Err(LocalError::Model(format!("{name}: {} values, expected {len}", v.len())));
            }
            Ok(v)
        };
        let embed = matrix(r, "token_embd.weight")?;
        let mut cfg = cfg;
        cfg.vocab = embed.rows;
        let mut layers = Vec::with_capacity(cfg.layers);
        let kv_dim = cfg.kv_heads * cfg.head_dim;
        for i in 0..cfg.layers {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            let layer = Layer {
                attn_norm: vector(r, &p("attn_norm"), dim)?,
                wq: matrix(r, &p("attn_q"))?,
                wk: matrix(r, &p("attn_k"))?,
                wv: matrix(r, &p("attn_v"))?,
                wo: matrix(r, &p("attn_output"))?,
                ffn_norm: vector(r, &p("ffn_norm"), dim)?,
                gate: matrix(r, &p("ffn_gate"))?,
                up: matrix(r, &p("ffn_up"))?,
                down: matrix(r, &p("ffn_down"))?,
            };
            let shapes = [
                (&layer.wq, dim, dim),
                (&layer.wk, kv_dim, dim),
                (&layer.wv, kv_dim, dim),
                (&layer.wo, dim, dim),
                (&layer.gate, cfg.ff, dim),
                (&layer.up, cfg.ff, dim),
                (&layer.down, dim, cfg.ff),
            ];
            if shapes.iter().any(|(m, rows, cols)| m.rows != *rows || m.cols != *cols) {
                return Err(LocalError::Model(format!("blk.{i}: unexpected weight shapes")));
            }
            layers.push(layer);
        }
        let norm = vector(r, "output_norm.weight", dim)?;
        let output = if ct.tensor_infos.contains_key("output.weight") {
            Some(matrix(r, "output.weight")?)
        } else {
            None
        };
        let half = head_dim / 2;
        let mut rope_cos = Vec::with_capacity(context * half);
        let mut rope_sin = Vec::with_capacity(context * half);
        for pos in 0..context {
            for i in 0..half {
                let theta = pos as f32 / cfg.rope_base.powf(2.0 * i as f32 / head_dim as f32);
                rope_cos.push(theta.cos());
                rope_sin.push(theta.sin());
            }
        }
        Ok(Model {
            cfg,
            embed,
            layers,
            norm,
            output,
            rope_cos,
            rope_sin,
        })
    }

    fn output(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// Runs `tokens` (at positions `state.len..`) through the model, appending to the KV cache; the logits
    /// after the last token are then in [`State::logits`].
    pub fn forward(&self, tokens: &[u32], state: &mut State) -> Result<(), LocalError> {
        let mut scratch = std::mem::take(&mut state.scratch);
        let r = self.forward_batch(&mut [(tokens, &mut *state)], &mut scratch);
        state.scratch = scratch;
        r
    }

    /// One step for several conversations at once: each segment's tokens continue its own state. The
    /// matrix products run over all the tokens together, reading each weight row once for the whole batch
    /// (several conversations decode for about the memory traffic of one); attention stays per conversation.
    pub fn forward_batch(&self, segs: &mut [(&[u32], &mut State)], s: &mut Scratch) -> Result<(), LocalError> {
        let c = &self.cfg;
        let (dim, kv_dim, hd) = (c.dim, c.kv_heads * c.head_dim, c.head_dim);
        // Each token's conversation and position.
        let mut at: Vec<(usize, usize)> = Vec::new();
        for (i, (tokens, state)) in segs.iter_mut().enumerate() {
            let start = state.len;
            if tokens.is_empty() || start + tokens.len() > c.context {
                return Err(LocalError::Model(format!("context of {} tokens exceeded", c.context)));
            }
            if let Some(t) = tokens.iter().find(|t| **t as usize >= c.vocab) {
                return Err(LocalError::Model(format!("token {t} outside the vocabulary")));
            }
            state.reserve(self, start + tokens.len());
            at.extend((start..start + tokens.len()).map(|p| (i, p)));
        }
        let n = at.len();
        s.reserve(self, n, segs.len());
        for (t, tok) in segs.iter().flat_map(|(tokens, _)| tokens.iter()).enumerate() {
            self.embed.row_f32(*tok as usize, &mut s.x[t * dim..(t + 1) * dim]);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let group = c.heads / c.kv_heads;
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention.
            rms_norm(&s.x[..n * dim], &layer.attn_norm, c.eps, &mut s.xn[..n * dim], dim);
            quantize_rows(&s.xn[..n * dim], &mut s.xq, dim);
            {
                let q = OutRows::new(&mut s.q[..n * dim]);
                let k = OutRows::new(&mut s.k[..n * kv_dim]);
                let v = OutRows::new(&mut s.v[..n * kv_dim]);
                parallel(&[(&layer.wq, &q), (&layer.wk, &k), (&layer.wv, &v)], &s.xq, n);
            }
            for (t, &(seg, pos)) in at.iter().enumerate() {
                self.rope(&mut s.q[t * dim..(t + 1) * dim], pos);
                self.rope(&mut s.k[t * kv_dim..(t + 1) * kv_dim], pos);
                let st = &mut *segs[seg].1;
                let o = (l * st.cap + pos) * kv_dim;
                st.k_cache[o..o + kv_dim].copy_from_slice(&s.k[t * kv_dim..(t + 1) * kv_dim]);
                st.v_cache[o..o + kv_dim].copy_from_slice(&s.v[t * kv_dim..(t + 1) * kv_dim]);
            }
            for (t, &(seg, pos)) in at.iter().enumerate() {
                let st = &*segs[seg].1;
                for h in 0..c.heads {
                    let kvh = h / group;
                    let q = &s.q[t * dim + h * hd..t * dim + (h + 1) * hd];
                    let scores = &mut s.scores[..pos + 1];
                    for (j, sc) in scores.iter_mut().enumerate() {
                        let o = (l * st.cap + j) * kv_dim + kvh * hd;
                        *sc = dot_f32(q, &st.k_cache[o..o + hd]) * scale;
                    }
                    softmax(scores);
                    let out = &mut s.att[t * dim + h * hd..t * dim + (h + 1) * hd];
                    out.fill(0.0);
                    for (j, &p) in scores.iter().enumerate() {
                        let o = (l * st.cap + j) * kv_dim + kvh * hd;
                        for (a, v) in out.iter_mut().zip(&st.v_cache[o..o + hd]) {
                            *a += p * v;
                        }
                    }
                }
            }
            quantize_rows(&s.att[..n * dim], &mut s.xq, dim);
            {
                let o = OutRows::new(&mut s.xn[..n * dim]);
                parallel(&[(&layer.wo, &o)], &s.xq, n);
            }
            for (x, o) in s.x[..n * dim].iter_mut().zip(&s.xn[..n * dim]) {
                *x += o;
            }
            // Feed-forward (SwiGLU).
            rms_norm(&s.x[..n * dim], &layer.ffn_norm, c.eps, &mut s.xn[..n * dim], dim);
            quantize_rows(&s.xn[..n * dim], &mut s.xq, dim);
            {
                let g = OutRows::new(&mut s.gate[..n * c.ff]);
                let u = OutRows::new(&mut s.up[..n * c.ff]);
                parallel(&[(&layer.gate, &g), (&layer.up, &u)], &s.xq, n);
            }
            for (g, u) in s.gate[..n * c.ff].iter_mut().zip(&s.up[..n * c.ff]) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            quantize_rows(&s.gate[..n * c.ff], &mut s.xq, c.ff);
            {
                let d = OutRows::new(&mut s.xn[..n * dim]);
                parallel(&[(&layer.down, &d)], &s.xq, n);
            }
            for (x, d) in s.x[..n * dim].iter_mut().zip(&s.xn[..n * dim]) {
                *x += d;
            }
        }
        // Logits after each conversation's last token, in one product.
        let m = segs.len();
        let mut end = 0;
        for (i, (tokens, _)) in segs.iter().enumerate() {
            end += tokens.len();
            let last = &s.x[(end - 1) * dim..end * dim];
            rms_norm(last, &self.norm, c.eps, &mut s.xn[i * dim..(i + 1) * dim], dim);
        }
        quantize_rows(&s.xn[..m * dim], &mut s.xq, dim);
        {
            let out = OutRows::new(&mut s.logits[..m * c.vocab]);
            parallel(&[(self.output(), &out)], &s.xq, m);
        }
        for (i, (tokens, state)) in segs.iter_mut().enumerate() {
            state.logits.copy_from_slice(&s.logits[i * c.vocab..(i + 1) * c.vocab]);
            state.len += tokens.len();
        }
        Ok(())
    }

    /// Rotary position embedding on consecutive pairs (llama.cpp's "normal" layout for llama models).
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.cfg.head_dim / 2;
        let cos = &self.rope_cos[pos * half..(pos + 1) * half];
        let sin = &self.rope_sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(self.cfg.head_dim) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

/// One conversation's state: its KV cache and the logits after its last token.
pub struct State {
    /// Tokens in the cache.
    pub len: usize,
    /// Positions allocated in the caches (grown in steps).
    cap: usize,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    logits: Vec<f32>,
    /// Buffers for [`Model::forward`] (a batch of one).
    scratch: Scratch,
}

impl State {
    pub fn new(model: &Model) -> State {
        State {
            len: 0,
            cap: 0,
            k_cache: Vec::new(),
            v_cache: Vec::new(),
            logits: vec![0.0; model.cfg.vocab],
            scratch: Scratch::default(),
        }
    }

    /// The logits after the last token given to [`Model::forward`].
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Room for `positions` in the cache.
    fn reserve(&mut self, model: &Model, positions: usize) {
        let c = &model.cfg;
        let kv_dim = c.kv_heads * c.head_dim;
        if positions > self.cap {
            // The cache is laid out [layer][position][kv]; growing it re-spaces the layers.
            let new_cap = positions.next_power_of_two().clamp(64, c.context);
            for cache in [&mut self.k_cache, &mut self.v_cache] {
                let mut grown = vec![0f32; c.layers * new_cap * kv_dim];
                for l in 0..c.layers {
                    let old = &cache[l * self.cap * kv_dim..(l * self.cap + self.len) * kv_dim];
                    grown[l * new_cap * kv_dim..l * new_cap * kv_dim + old.len()].copy_from_slice(old);
                }
                *cache = grown;
            }
            self.cap = new_cap;
        }
    }
}

/// Buffers of one step, sized for the largest batch so far and reused.
#[derive(Default)]
pub struct Scratch {
    tokens: usize,
    seqs: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    xq: Vec<BlockQ8>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    logits: Vec<f32>,
}

impl Scratch {
    fn reserve(&mut self, model: &Model, tokens: usize, seqs: usize) {
        let c = &model.cfg;
        let kv_dim = c.kv_heads * c.head_dim;
        if tokens > self.tokens {
            let widest = c.dim.max(c.ff);
            self.x = vec![0.0; tokens * c.dim];
            self.xn = vec![0.0; tokens * c.dim];
            self.xq = vec![BlockQ8::default(); tokens * widest / BLOCK];
            self.q = vec![0.0; tokens * c.dim];
            self.k = vec![0.0; tokens * kv_dim];
            self.v = vec![0.0; tokens * kv_dim];
            self.att = vec![0.0; tokens * c.dim];
            self.gate = vec![0.0; tokens * c.ff];
            self.up = vec![0.0; tokens * c.ff];
            self.tokens = tokens;
        }
        if seqs > self.seqs {
            self.logits = vec![0.0; seqs * c.vocab];
            self.seqs = seqs;
        }
        if self.scores.len() < c.context {
            self.scores = vec![0.0; c.context];
        }
    }
}

/// Several products over the same input, their rows split over all cores.
fn parallel(products: &[(&Matrix, &OutRows<'_>)], xq: &[BlockQ8], tokens: usize) {
    let total: usize = products.iter().map(|(m, _)| m.rows).sum();
    // Whole groups of rows per work item keep the cursor cheap; the output matrix has 49,152 rows.
    const GROUP: usize = 16;
    candle_core::utils::barrier_pool().execute_chunked(total.div_ceil(GROUP), |items| {
        let (mut lo, hi) = (items.start * GROUP, (items.end * GROUP).min(total));
        let mut base = 0;
        for (m, out) in products {
            let end = base + m.rows;
            if lo < end && lo < hi {
                let to = hi.min(end);
                m.mul(xq, tokens, lo - base..to - base, out);
                lo = to;
            }
            base = end;
        }
    });
}

fn quantize_rows(x: &[f32], out: &mut [BlockQ8], width: usize) {
    for (row, q) in x.chunks_exact(width).zip(out.chunks_exact_mut(width / BLOCK)) {
        quantize_row(row, q);
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], dim: usize) {
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(w) {
            *o = v * inv * w;
        }
    }
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes: the compiler vectorizes this.
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(b.chunks_exact(8).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}
