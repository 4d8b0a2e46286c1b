//! One module per task, named `tNN_name` as in tests/ and book/src/.

pub mod t01_lora_layer;
pub mod t02_linear_with_lora;
pub mod t03_inject;
pub mod t04_save_load;
pub mod t05_data;
pub mod t06_train;
pub mod t07_eval;
pub mod t08_merge;
pub mod t09_qlora;
pub mod t10_multi_lora;
pub mod t11_mixed;
