//! Whisper tiny.en on candle (CPU), loaded from CTranslate2's weights:
//! names mapped to candle's, fused QKV / KV projections split (CTranslate2
//! keeps no K bias: Whisper has none). Greedy decoding, English, no
//! timestamp tokens: the voice-activity segment gives the times.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::{self as w, Config, audio, model::Whisper};

use crate::Error;
use crate::ct2::Ct2Model;
use crate::mel;
use crate::tokens::Tokens;

/// The sample rate the model hears.
pub const SAMPLE_RATE: u32 = 16_000;

/// The encoder's input is at least 6 s of mel frames (100 a second).
pub const MIN_AUDIO_FRAMES: usize = 600;

/// One loaded model; `transcribe` takes `&mut self` (its KV caches), so a
/// worker owns one.
pub struct Transcriber {
    model: Whisper,
    filters: Vec<f32>,
    tokens: Tokens,
    sot: u32,
    eot: u32,
    no_timestamps: u32,
    /// Logit bias: -inf for tokens never produced (config's suppress ids,
    /// every special token but the end of text).
    suppress: Tensor,
    /// Also suppressed on the first sampled token (a blank, the end).
    suppress_begin: Vec<u32>,
    /// Mel frames the encoder hears at least (`None`: always 30 s, as
    /// Whisper was trained).
    audio_frames: Option<usize>,
}

impl std::fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcriber").finish_non_exhaustive()
    }
}

fn c(e: candle_core::Error) -> Error {
    Error::Model(e.to_string())
}

impl Transcriber {
    /// Loads `model.bin`, `tokenizer.json` and `config.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| Error::Missing(format!("{}: {e}", dir.join(name).display())))
        };
        let ct2 = Ct2Model::parse(&read("model.bin")?)?;
        if ct2.spec != "WhisperSpec" {
            return Err(Error::Model(format!(
                "a {} is not a Whisper model",
                ct2.spec
            )));
        }
        let tokens = Tokens::from_json(&read("tokenizer.json")?)?;
        #[derive(serde::Deserialize, Default)]
        struct Ct2Config {
            #[serde(default)]
            suppress_ids: Vec<u32>,
            #[serde(default)]
            suppress_ids_begin: Vec<u32>,
        }
        let cfg: Ct2Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| Error::Model(format!("config.json: {e}")))?;
        let (tensors, config) = map_weights(&ct2)?;
        drop(ct2);
        let device = Device::Cpu;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = Whisper::load(&vb, config.clone()).map_err(c)?;
        let special = |name: &str| {
            tokens
                .special(name)
                .ok_or_else(|| Error::Model(format!("tokenizer.json has no {name}")))
        };
        let sot = special(w::SOT_TOKEN)?;
        let eot = special(w::EOT_TOKEN)?;
        let no_timestamps = special(w::NO_TIMESTAMPS_TOKEN)?;
        let mut bias = vec![0f32; config.vocab_size];
        for id in cfg.suppress_ids {
            if let Some(b) = bias.get_mut(id as usize) {
                *b = f32::NEG_INFINITY;
            }
        }
        // Every token past the end of text (start, languages, tasks,
        // timestamps) is never sampled.
        for (id, b) in bias.iter_mut().enumerate() {
            if id as u32 > eot {
                *b = f32::NEG_INFINITY;
            }
        }
        let suppress = Tensor::new(bias.as_slice(), &device).map_err(c)?;
        Ok(Self {
            model,
            filters: mel::filters(SAMPLE_RATE as f64, w::N_FFT, config.num_mel_bins),
            tokens,
            sot,
            eot,
            no_timestamps,
            suppress,
            suppress_begin: cfg.suppress_ids_begin,
            audio_frames: Some(MIN_AUDIO_FRAMES),
        })
    }

    /// The encoder hears all 30 s (Whisper's training shape) instead of the
    /// phrase and a second after it (at least 6 s): about three times the
    /// cost, and no better on the espeak-ng sentences of the tests.
    pub fn full_context(mut self) -> Self {
        self.audio_frames = None;
        self
    }

    /// The text spoken in `pcm` (mono, 16 kHz, at most 30 s; longer is cut).
    pub fn transcribe(&mut self, pcm: &[f32]) -> Result<String, Error> {
        let pcm = &pcm[..pcm.len().min(w::N_SAMPLES)];
        let n_mels = self.model.config.num_mel_bins;
        let mel = audio::pcm_to_mel(&self.model.config, pcm, &self.filters);
        let frames = mel.len() / n_mels;
        let mel = Tensor::from_vec(mel, (1, n_mels, frames), &Device::Cpu).map_err(c)?;
        let keep = match self.audio_frames {
            // The phrase and a second after it, in whole seconds (the
            // encoder's cost is linear in its input).
            Some(_) => (pcm.len() / w::HOP_LENGTH + 100).div_ceil(100) * 100,
            None => w::N_FRAMES,
        }
        .max(self.audio_frames.unwrap_or(0))
        .min(frames)
        .min(w::N_FRAMES);
        let mel = mel.narrow(2, 0, keep).map_err(c)?.contiguous().map_err(c)?;
        let features = self.model.encoder.forward(&mel, true).map_err(c)?;
        // Phrases of at most 15 s: ~4 tokens a second, with room to spare.
        let max_tokens = (pcm.len() / SAMPLE_RATE as usize * 8 + 16).min(200);
        let mut tokens = vec![self.sot, self.no_timestamps];
        let prompt = tokens.len();
        for i in 0..max_tokens {
            let input = Tensor::new(tokens.as_slice(), &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .map_err(c)?;
            let ys = self
                .model
                .decoder
                .forward(&input, &features, i == 0)
                .map_err(c)?;
            let (_, seq, _) = ys.dims3().map_err(c)?;
            let logits = self
                .model
                .decoder
                .final_linear(&ys.i((..1, seq - 1..)).map_err(c)?)
                .and_then(|l| l.i(0))
                .and_then(|l| l.i(0))
                .map_err(c)?;
            let mut logits = logits.broadcast_add(&self.suppress).map_err(c)?;
            if i == 0 && !self.suppress_begin.is_empty() {
                let mut v = logits.to_vec1::<f32>().map_err(c)?;
                for id in &self.suppress_begin {
                    if let Some(x) = v.get_mut(*id as usize) {
                        *x = f32::NEG_INFINITY;
                    }
                }
                logits = Tensor::new(v.as_slice(), &Device::Cpu).map_err(c)?;
            }
            let next = logits
                .argmax(D::Minus1)
                .and_then(|t| t.to_scalar::<u32>())
                .map_err(c)?;
            if next == self.eot {
                break;
            }
            tokens.push(next);
            if repeats(&tokens[prompt..]) {
                break;
            }
        }
        Ok(self.tokens.decode(&tokens[prompt..]))
    }
}

/// A greedy decoder stuck in a loop: the last 4 tokens repeated 4 times.
fn repeats(t: &[u32]) -> bool {
    let n = 4;
    if t.len() < n * 4 {
        return false;
    }
    let tail = &t[t.len() - n..];
    (1..4).all(|k| &t[t.len() - n * (k + 1)..t.len() - n * k] == tail)
}

/// CTranslate2's Whisper variables under candle's names, and the config.
fn map_weights(m: &Ct2Model) -> Result<(HashMap<String, Tensor>, Config), Error> {
    let get = |name: &str| {
        m.get(name)
            .ok_or_else(|| Error::Model(format!("model.bin has no {name}")))
    };
    let dev = Device::Cpu;
    let tensor = |name: &str| -> Result<Tensor, Error> {
        let v = get(name)?;
        Tensor::from_vec(v.to_f32(), v.shape.as_slice(), &dev).map_err(c)
    };
    let count_layers = |prefix: &str| {
        (0..)
            .take_while(|i| {
                m.variables
                    .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    };
    let emb = get("decoder/embeddings/weight")?;
    let conv1 = get("encoder/conv1/weight")?;
    let enc_pos = get("encoder/position_encodings/encodings")?;
    let dec_pos = get("decoder/position_encodings/encodings")?;
    let heads = |name: &str| {
        get(name)?
            .scalar_usize()
            .ok_or_else(|| Error::Model(format!("{name} is not a count")))
    };
    let (Some(&d_model), Some(&mels)) = (emb.shape.get(1), conv1.shape.get(1)) else {
        return Err(Error::Model("unexpected shapes".into()));
    };
    let config = Config {
        num_mel_bins: mels,
        max_source_positions: enc_pos.shape.first().copied().unwrap_or(1500),
        d_model,
        encoder_attention_heads: heads("encoder/num_heads")?,
        encoder_layers: count_layers("encoder"),
        vocab_size: emb.shape[0],
        max_target_positions: dec_pos.shape.first().copied().unwrap_or(448),
        decoder_attention_heads: heads("decoder/num_heads")?,
        decoder_layers: count_layers("decoder"),
        suppress_tokens: Vec::new(),
    };
    let mut out = HashMap::new();
    let mut put = |to: String, t: Tensor| {
        out.insert(to, t);
    };
    let linear = |put: &mut dyn FnMut(String, Tensor), from: &str, to: &str| {
        put(format!("{to}.weight"), tensor(&format!("{from}/weight"))?);
        put(format!("{to}.bias"), tensor(&format!("{from}/bias"))?);
        Ok::<_, Error>(())
    };
    let norm = |put: &mut dyn FnMut(String, Tensor), from: &str, to: &str| {
        put(format!("{to}.weight"), tensor(&format!("{from}/gamma"))?);
        put(format!("{to}.bias"), tensor(&format!("{from}/beta"))?);
        Ok::<_, Error>(())
    };
    // A fused projection split in `parts` along the output rows, under the
    // given names (K gets no bias).
    let split = |put: &mut dyn FnMut(String, Tensor), from: &str, to: &[String]| {
        let w = tensor(&format!("{from}/weight"))?;
        let b = tensor(&format!("{from}/bias"))?;
        let rows = w.dim(0).map_err(c)? / to.len();
        for (k, name) in to.iter().enumerate() {
            put(
                format!("{name}.weight"),
                w.narrow(0, k * rows, rows).map_err(c)?,
            );
            if !name.ends_with("k_proj") {
                put(
                    format!("{name}.bias"),
                    b.narrow(0, k * rows, rows).map_err(c)?,
                );
            }
        }
        Ok::<_, Error>(())
    };
    for side in ["encoder", "decoder"] {
        let layers = if side == "encoder" {
            config.encoder_layers
        } else {
            config.decoder_layers
        };
        for i in 0..layers {
            let f = format!("{side}/layer_{i}");
            let t = format!("model.{side}.layers.{i}");
            let qkv = ["q_proj", "k_proj", "v_proj"].map(|p| format!("{t}.self_attn.{p}"));
            split(&mut put, &format!("{f}/self_attention/linear_0"), &qkv)?;
            linear(
                &mut put,
                &format!("{f}/self_attention/linear_1"),
                &format!("{t}.self_attn.out_proj"),
            )?;
            norm(
                &mut put,
                &format!("{f}/self_attention/layer_norm"),
                &format!("{t}.self_attn_layer_norm"),
            )?;
            if side == "decoder" {
                linear(
                    &mut put,
                    &format!("{f}/attention/linear_0"),
                    &format!("{t}.encoder_attn.q_proj"),
                )?;
                let kv = ["k_proj", "v_proj"].map(|p| format!("{t}.encoder_attn.{p}"));
                split(&mut put, &format!("{f}/attention/linear_1"), &kv)?;
                linear(
                    &mut put,
                    &format!("{f}/attention/linear_2"),
                    &format!("{t}.encoder_attn.out_proj"),
                )?;
                norm(
                    &mut put,
                    &format!("{f}/attention/layer_norm"),
                    &format!("{t}.encoder_attn_layer_norm"),
                )?;
            }
            linear(&mut put, &format!("{f}/ffn/linear_0"), &format!("{t}.fc1"))?;
            linear(&mut put, &format!("{f}/ffn/linear_1"), &format!("{t}.fc2"))?;
            norm(
                &mut put,
                &format!("{f}/ffn/layer_norm"),
                &format!("{t}.final_layer_norm"),
            )?;
        }
        norm(
            &mut put,
            &format!("{side}/layer_norm"),
            &format!("model.{side}.layer_norm"),
        )?;
    }
    linear(&mut put, "encoder/conv1", "model.encoder.conv1")?;
    linear(&mut put, "encoder/conv2", "model.encoder.conv2")?;
    put(
        "model.decoder.embed_tokens.weight".into(),
        tensor("decoder/embeddings/weight")?,
    );
    put(
        "model.decoder.embed_positions.weight".into(),
        tensor("decoder/position_encodings/encodings")?,
    );
    Ok((out, config))
}
