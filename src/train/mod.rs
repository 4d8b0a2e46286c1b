//! What a training run needs besides the model: instruction and E2E data ([`data`]; E2E's
//! release is downloaded by `fetch::e2e`), AdamW with parameter groups and saved state ([`optim`]), the run's history
//! and plot ([`history`]), checkpoint files ([`checkpoint`]), the progress bar
//! ([`progress_bar`]), the divergence checks ([`guard`]), the settings a command takes
//! ([`settings`]), and the [`trainee`] interface: what a run trains. The loop itself is the
//! learner's task 2.2 (`tasks::t06_train::train`).
//!
//! May use: `error`, `io`, `compute`, `lora`, `models`, task t05 (the examples it batches).

pub mod checkpoint;
pub mod data;
pub mod guard;
pub mod history;
pub mod optim;
pub mod progress_bar;
pub mod settings;
pub mod trainee;
