//! Every download the crate makes, and the one folder they land in: the offline cache
//! ([`cache`]), HTTP with a progress bar ([`http`]), files pinned by SHA-256 inside PyPI wheels
//! ([`wheel`]), the models that have an offline copy, by name ([`offline_models`]), model
//! snapshots from the Hugging Face Hub ([`hub`]), and E2E NLG's release ([`e2e`]).
//!
//! May use: `error`, `io`.

pub mod cache;
pub mod e2e;
pub mod http;
pub mod hub;
pub mod offline_models;
pub mod wheel;
