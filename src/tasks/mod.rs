//! The learner's tasks, from whichever tree the `exercises` feature selects: the stubs in
//! `exercises/` or the reference in `solutions/`. Code that builds on a chapter names it here
//! (`crate::tasks::t03_inject::inject_lora`), so the dependency shows at the use site; the
//! [`manifest`] lists the tasks in order with their titles and hints, in English and Chinese;
//! [`progress`] renders what the progress command prints; [`lang`] picks the reader's language (the locale, or `--lang`) and maps a section of the English
//! book to the Chinese one.

pub mod lang;
pub mod manifest;
pub mod progress;

#[cfg(feature = "exercises")]
pub use crate::exercises::{
    t01_lora_layer, t02_linear_with_lora, t03_inject, t04_save_load, t05_data, t06_train, t07_eval, t08_merge,
    t09_qlora, t10_multi_lora, t11_mixed,
};
#[cfg(not(feature = "exercises"))]
pub use crate::solutions::{
    t01_lora_layer, t02_linear_with_lora, t03_inject, t04_save_load, t05_data, t06_train, t07_eval, t08_merge,
    t09_qlora, t10_multi_lora, t11_mixed,
};
