//! The quantizer's command-line flags (`vq-train`), applied here so that the binaries do not
//! reach into each kind's settings.

use super::{GradientEstimator, QuantizerChoice, QuantizerConfig};

/// The quantizer flags of a training command. Unset flags leave the config's settings alone;
/// a flag that the chosen kind does not have is an error naming both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct QuantizerArgs {
    /// The quantizer (its other settings take their defaults unless set by the flags below)
    /// [default: vq]
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub quantizer: Option<QuantizerChoice>,
    /// Codebook size K (vq, cosine, residual; every level of a residual quantizer)
    /// [default: 512]
    #[arg(long, conflicts_with = "resume")]
    pub codebook_size: Option<i64>,
    /// Dimension of the codes: the projected dimension of cosine codes (e.g. 8, 16, 32)
    /// [default: 64; cosine 16]
    #[arg(long, conflicts_with = "resume")]
    pub code_dim: Option<i64>,
    /// FSQ: values per latent channel, e.g. 8,8,8 (512 codes) or 8,5,5,5 (1,000)
    /// [default: 8,8,8]
    #[arg(long, value_delimiter = ',', conflicts_with = "resume")]
    pub fsq_levels: Option<Vec<i64>>,
    /// Residual VQ: number of codebooks in sequence [default: 4]
    #[arg(long, conflicts_with = "resume")]
    pub depth: Option<i64>,
    /// Residual VQ: train each step on a random number of levels, so that the model decodes
    /// at every depth [default: off]
    #[arg(long, conflicts_with = "resume")]
    pub quantizer_dropout: bool,
    /// Weight of the commitment loss β [default: 0.25]
    #[arg(long, conflicts_with = "resume")]
    pub commitment_cost: Option<f64>,
    /// Gradient through the code lookup (vq) [default: straight-through]
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub gradient: Option<GradientEstimator>,
}

impl QuantizerArgs {
    /// Lays the flags over `config` and checks the result.
    pub fn apply(&self, config: &mut QuantizerConfig) -> Result<(), String> {
        if let Some(kind) = self.quantizer {
            *config = QuantizerConfig::fresh(kind, config.latent_dim());
        }
        let kind = config.kind_name();
        let wrong = |flag: &str| format!("{flag} does not apply to the {kind} quantizer");
        let codebook_flags = self.codebook_size.is_some()
            || self.code_dim.is_some()
            || self.commitment_cost.is_some();
        if codebook_flags {
            let Some((codebook, code_dim)) = config.kind_mut().codebook_mut() else {
                return Err(wrong(
                    "--codebook-size, --code-dim and --commitment-cost (a codebook's settings)",
                ));
            };
            codebook.codebook_size = self.codebook_size.unwrap_or(codebook.codebook_size);
            codebook.commitment_cost = self.commitment_cost.unwrap_or(codebook.commitment_cost);
            *code_dim = self.code_dim.unwrap_or(*code_dim);
        }
        if let Some(levels) = &self.fsq_levels {
            match config {
                QuantizerConfig::Fsq(c) => c.levels = levels.clone(),
                _ => return Err(wrong("--fsq-levels")),
            }
        }
        if self.depth.is_some() || self.quantizer_dropout {
            match config {
                QuantizerConfig::Residual(c) => {
                    c.depth = self.depth.unwrap_or(c.depth);
                    c.dropout |= self.quantizer_dropout;
                }
                _ => return Err(wrong("--depth and --quantizer-dropout")),
            }
        }
        if let Some(gradient) = self.gradient {
            match config {
                QuantizerConfig::Vq(c) => c.gradient = gradient,
                _ => return Err(wrong("--gradient")),
            }
        }
        config.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_set_the_chosen_kind_and_refuse_another_kinds_flags() {
        let mut config = QuantizerConfig::default();
        let args = QuantizerArgs {
            quantizer: Some(QuantizerChoice::Residual),
            codebook_size: Some(256),
            depth: Some(2),
            quantizer_dropout: true,
            ..Default::default()
        };
        args.apply(&mut config).unwrap();
        let QuantizerConfig::Residual(r) = &config else {
            panic!("{config:?}")
        };
        assert_eq!(
            (r.depth, r.codebook.codebook_size, r.dropout, r.code_dim),
            (2, 256, true, 64)
        );
        // A cosine quantizer keeps the latent width and takes its own code dimension.
        let mut config = QuantizerConfig::default();
        QuantizerArgs {
            quantizer: Some(QuantizerChoice::Cosine),
            code_dim: Some(8),
            ..Default::default()
        }
        .apply(&mut config)
        .unwrap();
        let QuantizerConfig::Cosine(c) = &config else {
            panic!("{config:?}")
        };
        assert_eq!((c.code_dim, c.latent_dim), (8, 64));
        // FSQ has no codebook; the vq kind has no depth.
        let err = QuantizerArgs {
            quantizer: Some(QuantizerChoice::Fsq),
            codebook_size: Some(8),
            ..Default::default()
        }
        .apply(&mut QuantizerConfig::default())
        .unwrap_err();
        assert!(err.contains("fsq"), "{err}");
        let err = QuantizerArgs {
            depth: Some(3),
            ..Default::default()
        }
        .apply(&mut QuantizerConfig::default())
        .unwrap_err();
        assert!(err.contains("--depth") && err.contains("vq"), "{err}");
        // The result is validated.
        assert!(QuantizerArgs {
            codebook_size: Some(1),
            ..Default::default()
        }
        .apply(&mut QuantizerConfig::default())
        .is_err());
    }

    /// The shared codebook settings sit beside each kind's own in `config.json`, as before
    /// they were shared, and a misspelt one is still refused.
    #[test]
    fn shared_settings_keep_the_file_format() {
        let q: QuantizerConfig = serde_json::from_str(
            r#"{"kind": "cosine", "codebook_size": 64, "code_dim": 8, "latent_dim": 32, "dead_code_steps": 7}"#,
        )
        .unwrap();
        let QuantizerConfig::Cosine(c) = &q else {
            panic!("{q:?}")
        };
        assert_eq!(
            (
                c.codebook.codebook_size,
                c.codebook.dead_code_steps,
                c.code_dim,
                c.latent_dim
            ),
            (64, 7, 8, 32)
        );
        let json = serde_json::to_value(&q).unwrap();
        assert_eq!(json["codebook_size"], 64, "{json}");
        assert!(json.get("codebook").is_none(), "{json}");
        for typo in [
            r#"{"kind": "vq", "codebok_size": 64}"#,
            r#"{"kind": "residual", "depht": 2}"#,
            r#"{"kind": "cosine", "latent": 2}"#,
        ] {
            assert!(
                serde_json::from_str::<QuantizerConfig>(typo).is_err(),
                "{typo}"
            );
        }
    }
}
