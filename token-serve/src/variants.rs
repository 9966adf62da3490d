//! Tokens a profile serves besides its own request, from the same
//! credential and store: a route's `scopes`/`audience`/`resource`
//! ([`Variant`]), and the scope sets the Google metadata endpoint is asked
//! for (`?scopes=`, [`ScopeSets`]).
//!
//! Each is the profile's [`TokenRequest`] with those parts replaced, so it
//! has its own cache key in the profile's cache: one IdP call per distinct
//! parameter set and refresh, shared by every route and caller asking for
//! it. A reload keeps a variant (its handle, `Authorization` value and
//! keep-warm timer) when its profile was kept and its request is the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use token_cache::{KeepWarm, TokenRequest};

use crate::config::Route;
use crate::gateway::BearerCache;
use crate::sidecar::Profile;

/// A route's own token: its profile's request with the route's parameters.
pub(crate) struct Variant {
    /// The profile it is derived from.
    pub(crate) profile_name: String,
    /// That profile's identity (its `Authorization` cache, shared by its
    /// clones): a reload reuses the variant only for the very same profile.
    base: Arc<BearerCache>,
    /// What is asked of the IdP.
    pub(crate) request: TokenRequest,
    /// The handle on the profile's cache for `request`.
    pub(crate) profile: Profile,
    /// The prefixes of the routes that send this token.
    pub(crate) routes: Vec<String>,
    /// Its keep-warm timer, once its first token was asked for
    /// ([`FileSidecar`](crate::FileSidecar)); shared with the variant that a
    /// reload keeps.
    pub(crate) warm: Arc<Mutex<Option<KeepWarm>>>,
}

impl Variant {
    /// What `/readyz`, logs and reload reports call it.
    pub(crate) fn label(&self) -> String {
        format!("{} (route {})", self.profile_name, self.routes.join(", "))
    }
}

/// The variants of `routes` (those with token parameters), each distinct
/// (profile, request) once, reusing those of `previous` whose profile is the
/// same one. Returns the variants and, per route in order, the profile its
/// requests use (the base profile, or its variant's).
pub(crate) fn for_routes(
    routes: &[(Route, Profile)],
    previous: &[Arc<Variant>],
) -> (Vec<Arc<Variant>>, Vec<Profile>) {
    let mut out: Vec<Variant> = Vec::new();
    let mut per_route = Vec::with_capacity(routes.len());
    for (route, base) in routes {
        // An exchange route's parameters are those of its callers'
        // exchanges (crate::exchange), not a token of the profile's own.
        if !route.has_token_parameters() || route.mode == crate::config::RouteMode::Exchange {
            per_route.push(base.clone());
            continue;
        }
        let request = route.token_request(base.handle.request());
        if request == *base.handle.request() {
            // The parameters say what the profile already asks for.
            per_route.push(base.clone());
            continue;
        }
        if let Some(v) = out
            .iter_mut()
            .find(|v| v.profile_name == route.profile && v.request == request)
        {
            v.routes.push(route.prefix.clone());
            per_route.push(v.profile.clone());
            continue;
        }
        let kept = previous.iter().find(|v| {
            v.profile_name == route.profile
                && Arc::ptr_eq(&v.base, &base.bearer)
                && v.request == request
        });
        let (profile, warm) = match kept {
            Some(v) => (v.profile.clone(), Arc::clone(&v.warm)),
            None => (
                // The route's token is its profile's credential: bound to the
                // same DPoP key, reported with the same store.
                Profile::new(&base.cache, &request).with_variant_of(base),
                Arc::default(),
            ),
        };
        per_route.push(profile.clone());
        out.push(Variant {
            profile_name: route.profile.clone(),
            base: Arc::clone(&base.bearer),
            request,
            profile,
            routes: vec![route.prefix.clone()],
            warm,
        });
    }
    (out.into_iter().map(Arc::new).collect(), per_route)
}

/// The scope sets the Google metadata endpoint was asked for, bounded.
pub(crate) struct ScopeSets {
    /// The profile's identity (see [`Variant`]).
    base: Arc<BearerCache>,
    max: usize,
    sets: Mutex<HashMap<TokenRequest, Profile>>,
}

/// More distinct scope sets were asked for than `max_scope_sets`.
pub(crate) struct TooManyScopeSets(pub(crate) usize);

impl ScopeSets {
    /// The sets of `base`, those of `previous` when it served the same
    /// profile with the same bound.
    pub(crate) fn new(base: &Profile, max: usize, previous: Option<&Arc<Self>>) -> Arc<Self> {
        if let Some(p) = previous.filter(|p| Arc::ptr_eq(&p.base, &base.bearer) && p.max == max) {
            return Arc::clone(p);
        }
        Arc::new(Self {
            base: Arc::clone(&base.bearer),
            max,
            sets: Mutex::default(),
        })
    }

    /// The profile serving `request` (derived from `base`), made on first
    /// use; an error past the bound.
    pub(crate) fn get(
        &self,
        base: &Profile,
        request: &TokenRequest,
    ) -> Result<Profile, TooManyScopeSets> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = sets.get(request) {
            return Ok(p.clone());
        }
        if sets.len() >= self.max {
            return Err(TooManyScopeSets(self.max));
        }
        let p = Profile::new(&base.cache, request).with_variant_of(base);
        sets.insert(request.clone(), p.clone());
        Ok(p)
    }
}
