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

    /// Runs `tokens` (at positions `state.len..`) through the model, appending to the KV cache; returns
    /// the logits after the last token.
    pub fn forward(&self, tokens: &[u32], state: &mut State) -> Result<(), LocalError> {
        let c = &self.cfg;
        let n = tokens.len();
        let start = state.len;
        if n == 0 || start + n > c.context {
            return Err(LocalError::Model(format!("context of {} tokens exceeded", c.context)));
        }
        let (dim, kv_dim, hd) = (c.dim, c.kv_heads * c.head_dim, c.head_dim);
        state.reserve(self, start + n, n);
        let s = &mut *state;
        let cap = s.cap;
        for (t, &tok) in tokens.iter().enumerate() {
            if tok as usize >= c.vocab {
                return Err(LocalError::Model(format!("token {tok} outside the vocabulary")));
            }
            self.embed.row_f32(tok as usize, &mut s.x[t * dim..(t + 1) * dim]);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention.
            rms_norm(&s.x[..n * dim], &layer.attn_norm, c.eps, &mut s.xn[..n * dim], dim);
            quantize_rows(&s.xn[..n * dim], &mut s.xq, dim);
            {
                let q = OutRows::new(&mut s.q[..n * dim]);
                let k = OutRows::new(&mut s.k[..n * kv_dim]);
                let v = OutRows::new(&mut s.v[..n * kv_dim]);
                let xq = &s.xq;
                parallel(&[(&layer.wq, &q), (&layer.wk, &k), (&layer.wv, &v)], xq, n);
            }
            for t in 0..n {
                let pos = start + t;
                self.rope(&mut s.q[t * dim..(t + 1) * dim], pos);
                self.rope(&mut s.k[t * kv_dim..(t + 1) * kv_dim], pos);
                let at = (l * cap + pos) * kv_dim;
                s.k_cache[at..at + kv_dim].copy_from_slice(&s.k[t * kv_dim..(t + 1) * kv_dim]);
                s.v_cache[at..at + kv_dim].copy_from_slice(&s.v[t * kv_dim..(t + 1) * kv_dim]);
            }
            let group = c.heads / c.kv_heads;
            for t in 0..n {
                let pos = start + t;
                for h in 0..c.heads {
                    let kvh = h / group;
                    let q = &s.q[t * dim + h * hd..t * dim + (h + 1) * hd];
                    let scores = &mut s.scores[..pos + 1];
                    for (j, sc) in scores.iter_mut().enumerate() {
                        let at = (l * cap + j) * kv_dim + kvh * hd;
                        *sc = dot_f32(q, &s.k_cache[at..at + hd]) * scale;
                    }
                    softmax(scores);
                    let out = &mut s.att[t * dim + h * hd..t * dim + (h + 1) * hd];
                    out.fill(0.0);
                    for (j, &p) in scores.iter().enumerate() {
                        let at = (l * cap + j) * kv_dim + kvh * hd;
                        for (o, v) in out.iter_mut().zip(&s.v_cache[at..at + hd]) {
                            *o += p * v;
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
        // Logits of the last token only.
        let last = &s.x[(n - 1) * dim..n * dim];
        rms_norm(last, &self.norm, c.eps, &mut s.xn[..dim], dim);
        quantize_rows(&s.xn[..dim], &mut s.xq, dim);
        {
            let out = OutRows::new(&mut s.logits);
            parallel(&[(self.output(), &out)], &s.xq, 1);
        }
        s.len = start + n;
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

/// One conversation's state: its KV cache and scratch buffers.
pub struct State {
    /// Tokens in the cache.
    pub len: usize,
    /// Positions allocated in the caches (grown in steps).
    cap: usize,
    /// Tokens the scratch buffers hold.
    batch: usize,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
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

impl State {
    /// The logits after the last token given to [`Model::forward`].
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    pub fn new(model: &Model) -> State {
        State {
            len: 0,
            cap: 0,
            batch: 0,
            k_cache: Vec::new(),
            v_cache: Vec::new(),
            x: Vec::new(),
            xn: Vec::new(),
            xq: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            att: Vec::new(),
            gate: Vec::new(),
            up: Vec::new(),
            scores: Vec::new(),
            logits: vec![0.0; model.cfg.vocab],
        }
    }

    /// Room for `positions` in the cache and `tokens` at once in the scratch buffers.
    fn reserve(&mut self, model: &Model, positions: usize, tokens: usize) {
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
        if tokens > self.batch {
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
            self.batch = tokens;
        }
        if self.scores.len() < positions {
            self.scores = vec![0.0; positions.next_power_of_two().min(c.context)];
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
