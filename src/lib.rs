//! labelmill: classify documents at high volume with a quantised LLaMA 2 model.
pub mod engine;
pub mod task;
pub mod tiny;
