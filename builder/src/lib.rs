//! estiba's builder: everything between a planned [`estiba_frontend::BuildGraph`]
//! and an image in the store or an archive: the build context, layers,
//! images and archives, the solver. The `estiba` binary (`main.rs`, `cli/`)
//! is a thin layer over this library.
pub mod archive;
pub mod cachekey;
pub mod compress;
pub mod context;
pub mod copy;
pub mod executor;
pub mod fetch;
pub mod image;
pub mod layer;
mod memo;
pub mod progress;
pub mod registry;
pub mod rootfs;
pub mod rootless;
pub mod solve;
mod sys;
pub mod tree;
pub mod verify;
