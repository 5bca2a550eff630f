//! Where indexes live: beside their image in the registry, and in a local index store.
//!
//! # What this crate owns, and what it must not touch
//!
//! It owns **the index artifact** — how a `.clip` travels through a registry as an OCI 1.1
//! artifact whose subject is the image manifest it indexes (`docs/REGISTRY.md` describes it) —
//! and **the local index store**, where a machine keeps the indexes it fetched or made, keyed
//! by manifest digest, and **the checks that bind an index to its image**. It speaks to
//! registries only through [`clip_registry::Client`], reads archives only through
//! [`clip_archive::Archive`], and knows nothing of indexing, fetching spans or mounting.
//!
//! # Principal items
//!
//! - [`push`]: uploads an archive as an artifact referring to its image's manifest, and makes
//!   it discoverable (the registry's referrers API, or the referrers tag, updated keeping
//!   everyone else's entries).
//! - [`find`]: the index artifact of an image, if there is one.
//! - [`IndexStore`]: [`IndexStore::get`] an index by manifest digest, or
//!   [`IndexStore::download`] one from the registry (artifact and blob verified against their
//!   digests, the archive opened and checked, then bound to the image) or
//!   [`IndexStore::insert`] one made here; entries are published atomically.
//!   [`IndexStore::remember`] what a reference resolved to, so that [`IndexStore::recall`]
//!   can name the image's index while its registry cannot be reached.
//! - [`Profile`]: a startup profile (what a container read while it started), kept beside the
//!   index ([`IndexStore::profile`], [`IndexStore::put_profile`]) and in the registry
//!   ([`push_profile`], [`find_profile`], [`IndexStore::download_profile`]).
//! - [`check_binding`]: an archive's manifest digest, config digest and layer table equal the
//!   image's, as the registry describes it now.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod artifact;
mod error;
mod local;
mod profile;

pub use artifact::{
    find, find_artifacts, find_profile, push, push_profile, Artifacts, FoundIndex, PushedIndex,
    Subject, ARTIFACT_TYPE, FORMAT_ANNOTATION, INDEX_MEDIA_TYPE, MAX_INDEX_BYTES, MAX_PACK_BYTES,
    MAX_PROFILE_BYTES, PACK_MEDIA_TYPE, PROFILE_ARTIFACT_TYPE, PROFILE_MEDIA_TYPE,
};
pub use error::StoreError;
pub use local::{
    check_binding, DownloadedProfile, IndexStore, Origin, PackRef, Resolution, StoredIndex,
};
pub use profile::{
    Profile, ProfileError, ProfileFile, ProfileSpan, MAX_PROFILE_FILES, MAX_PROFILE_SPANS,
    PROFILE_VERSION,
};
