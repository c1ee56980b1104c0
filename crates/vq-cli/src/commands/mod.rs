//! One module per command of `vq-cli`; `main` only parses flags and dispatches here. Each
//! command returns a report (`Display` for text, `Serialize` for `--json`).

pub mod decode;
pub mod device;
pub mod encode;
pub mod eval;
pub mod export;
pub mod fid;
mod files;
pub mod import;
pub mod info;
pub mod reconstruct;
pub mod sample;
pub mod tokens;

pub use decode::DecodeArgs;
pub use encode::{EncodeArgs, DEFAULT_LAMBDA};
pub use eval::{EvalArgs, EvalReport, SplitArg};
pub use files::{FileHead, FilesArgs, FilesReport, SearchArgs};
pub use reconstruct::ReconstructArgs;
pub use sample::SampleArgs;
