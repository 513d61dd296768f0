//! Layer tools: `plyfs diff` writes an upper directory as an OCI layer
//! tar, `plyfs apply` extracts a layer tar into a directory in kernel
//! overlay format (or OCI format).

pub mod apply;
pub mod diff;
pub mod dirchain;
pub mod lowers;
pub mod meta;
pub mod tar;
