//! Training for vqvae-rs: one generic loop ([`runner`]) over [`Task`]s — the VQ-VAE
//! ([`VqVaeTask`]), the code prior ([`PriorTask`]) and a decoder tuned adversarially for the
//! same codes ([`DecoderTask`]).

mod adam;
mod average;
pub mod codes;
pub mod config;
mod curves;
pub mod decoder;
pub mod dist;
pub mod prior;
pub mod runner;
pub mod task;
pub mod view;
mod vqvae;

pub use adam::Adam;
pub use average::WeightAverage;
pub use config::{DataConfig, RunConfig, Runtime, Schedule, TrainConfig};
pub use curves::plot as plot_curves;
pub use decoder::{DecoderEvaluation, DecoderTask, DecoderTrainConfig};
pub use prior::{PriorEvaluation, PriorTask, PriorTrainConfig};
pub use runner::{resume, train, RunState, RunSummary};
pub use task::Task;
pub use view::RunKind;
pub use vq_model::{evaluate, to_unit, Evaluation};
pub use vqvae::{synthetic_split, train_step, VqVaeTask};
