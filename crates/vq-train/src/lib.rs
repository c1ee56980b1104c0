//! Training a VQ-VAE on CIFAR-10: `cargo run --release -p vq-train`.

mod adam;
mod average;
pub mod checkpoint;
mod config;
mod curves;
pub mod prior;
mod trainer;

pub use adam::Adam;
pub use average::WeightAverage;
pub use config::TrainConfig;
pub use curves::plot as plot_curves;
pub use prior::{resume_prior, train_prior, PriorTrainConfig};
pub use trainer::{resume, synthetic_split, train, train_step, RunSummary};
pub use vq_model::{evaluate, to_unit, Evaluation};
