//! The mount's lower layers. Fixed at mount time for kernel overlayfs;
//! here `plyfs layer add` and `plyfs layer remove` may change them while
//! the mount is live, so the list is swapped whole, with a generation
//! number that tells nodes built from an older list to refresh themselves
//! (see `layers_live`).
//!
//! A layer keeps one id for its life (its `LowerObj::layer`), in the order
//! of the list: the layers given at mount time are numbered up from
//! [`FIRST_ID`], a layer added on top gets one below the top one's. So
//! comparing ids compares heights, and ids stay valid while the list
//! changes around them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::fs::LowerLayer;

/// Id of the top layer given at mount time.
pub const FIRST_ID: usize = 1 << 30;

/// One generation of the list, top layer first.
pub struct Lowers {
    pub generation: u64,
    pub layers: Vec<LowerLayer>,
}

impl std::ops::Deref for Lowers {
    type Target = [LowerLayer];
    fn deref(&self) -> &[LowerLayer] {
        &self.layers
    }
}

impl Lowers {
    /// The layer with id `id` (a `LowerObj::layer`), if still in the list.
    pub fn by_id(&self, id: usize) -> Option<&LowerLayer> {
        self.position(id).map(|i| &self.layers[i])
    }

    /// Index of the layer with id `id` (0 = top).
    pub fn position(&self, id: usize) -> Option<usize> {
        // Ids grow from the top down.
        self.layers
            .binary_search_by_key(&id, |l| l.root.layer())
            .ok()
    }

    /// The id for a layer added on top.
    pub fn id_above(&self) -> Option<usize> {
        match self.layers.first() {
            Some(l) => l.root.layer().checked_sub(1),
            None => Some(FIRST_ID),
        }
    }
}

/// The current list, swapped whole on a change.
pub struct LowerSet {
    current: RwLock<Arc<Lowers>>,
    generation: AtomicU64,
    /// Serialises changes.
    pub change: parking_lot::Mutex<()>,
    /// Directories known before a change, while it is applied.
    pub stale_dirs: crate::layers_live::StaleDirs,
}

impl LowerSet {
    pub fn new(layers: Vec<LowerLayer>) -> LowerSet {
        LowerSet {
            current: RwLock::new(Arc::new(Lowers {
                generation: 0,
                layers,
            })),
            generation: AtomicU64::new(0),
            change: parking_lot::Mutex::new(()),
            stale_dirs: Default::default(),
        }
    }

    /// The current list (a snapshot: a change later does not alter it).
    pub fn load(&self) -> Arc<Lowers> {
        self.current.read().clone()
    }

    /// The current generation: 0 until the first change. One atomic load,
    /// cheap enough for every request.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Installs a new list (ids in the order above); returns it.
    pub fn replace(&self, layers: Vec<LowerLayer>) -> Arc<Lowers> {
        let mut cur = self.current.write();
        let next = Arc::new(Lowers {
            generation: cur.generation + 1,
            layers,
        });
        *cur = next.clone();
        self.generation.store(next.generation, Ordering::Release);
        next
    }
}
