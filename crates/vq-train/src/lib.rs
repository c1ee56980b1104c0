//! Training a VQ-VAE on CIFAR-10: `cargo run --release -p vq-train`.

mod adam;
pub mod checkpoint;
mod config;
mod curves;
mod trainer;

pub use adam::Adam;
pub use config::TrainConfig;
pub use curves::plot as plot_curves;
pub use trainer::{
    evaluate, resume, synthetic_split, to_unit, train, train_step, Evaluation, RunSummary,
};
