//! Images: the pulls of a starting group (imagePullPolicy, registry credentials, image cache
//! hits) and image caches (pulled and unpacked ahead by CRI PullImage, with status and events).

use std::{collections::HashSet, time::Instant};

use crate::{
    backend::BackendError,
    model::{ContainerGroupSpec, EventType, ImageCacheSpec, ImageCacheStatus, ImagePullPolicy},
    store::{ImageCacheRecord, Store},
};

use super::{
    controller::Inner,
    cri::CriClient,
    translate::{auth_for, normalise_image},
};

/// Every image of the group with the strictest pull policy any container gives it
/// (Always > IfNotPresent > Never), init containers first, in spec order.
pub fn images_with_policy(spec: &ContainerGroupSpec) -> Vec<(String, ImagePullPolicy)> {
    let rank = |p: ImagePullPolicy| match p {
        ImagePullPolicy::Never => 0,
        ImagePullPolicy::IfNotPresent => 1,
        ImagePullPolicy::Always => 2,
    };
    let mut out: Vec<(String, ImagePullPolicy)> = Vec::new();
    for container in spec.all_containers() {
        match out.iter_mut().find(|(image, _)| *image == container.image) {
            Some((_, policy)) if rank(container.image_pull_policy) > rank(*policy) => {
                *policy = container.image_pull_policy;
            }
            Some(_) => {}
            None => out.push((container.image.clone(), container.image_pull_policy)),
        }
    }
    out
}

/// The cache a group asked for by id must exist, be Ready and hold every image of the group.
pub fn check_cache_usable(
    store: &Store,
    cache_id: &str,
    spec: &ContainerGroupSpec,
) -> Result<ImageCacheRecord, BackendError> {
    let invalid = |reason: String| BackendError::Invalid {
        field: "imageCacheId".into(),
        reason,
    };
    let cache = store
        .image_cache_record(cache_id)?
        .ok_or_else(|| invalid(format!("no image cache {cache_id}")))?;
    if cache.status != ImageCacheStatus::Ready {
        return Err(invalid(format!(
            "image cache {cache_id} is {}, not Ready",
            cache.status.as_str()
        )));
    }
    let held: HashSet<String> = cache
        .spec
        .images
        .iter()
        .map(|i| normalise_image(i))
        .collect();
    if let Some(missing) = spec
        .all_containers()
        .find(|c| !held.contains(&normalise_image(&c.image)))
    {
        return Err(invalid(format!(
            "image cache {cache_id} does not hold {}",
            missing.image
        )));
    }
    Ok(cache)
}

/// Makes every image of the group present: a matching image cache (by id or
/// autoMatchImageCache) skips pulling entirely; otherwise each image follows its pull policy.
pub(crate) async fn ensure_group_images(
    inner: &Inner,
    group_id: &str,
    spec: &ContainerGroupSpec,
) -> Result<(), BackendError> {
    let store = &inner.store;
    let event = |t, reason: &str, message: &str| {
        if let Err(e) = store.add_event(group_id, t, reason, message) {
            tracing::warn!(group = group_id, "storing event: {e}");
        }
    };
    let images = images_with_policy(spec);
    let cache = if let Some(cache_id) = &spec.image_cache_id {
        Some(check_cache_usable(store, cache_id, spec)?)
    } else if spec.auto_match_image_cache {
        let wanted: Vec<String> = images.iter().map(|(i, _)| i.clone()).collect();
        store.find_image_cache(&wanted, normalise_image)?
    } else {
        None
    };
    if let Some(cache) = &cache {
        event(
            EventType::Normal,
            "ImageCacheHit",
            &format!("hit image cache {}", cache.id),
        );
    }
    for (image, policy) in images {
        let present = inner.cri.image_id(&image).await?.is_some();
        if cache.is_some() && present {
            continue;
        }
        match policy {
            ImagePullPolicy::Never if !present => {
                event(
                    EventType::Warning,
                    "ErrImageNeverPull",
                    &format!("image {image:?} is not present and imagePullPolicy is Never"),
                );
                return Err(BackendError::Invalid {
                    field: "imagePullPolicy".into(),
                    reason: format!("image {image:?} is not present and the policy is Never"),
                });
            }
            ImagePullPolicy::Never | ImagePullPolicy::IfNotPresent if present => {
                event(
                    EventType::Normal,
                    "Pulled",
                    &format!("container image {image:?} already present on machine"),
                );
            }
            _ => pull(inner, group_id, &image, spec).await?,
        }
    }
    Ok(())
}

async fn pull(
    inner: &Inner,
    owner_id: &str,
    image: &str,
    spec: &ContainerGroupSpec,
) -> Result<(), BackendError> {
    pull_with_events(
        &inner.store,
        &inner.cri,
        owner_id,
        image,
        &spec.image_registry_credentials,
    )
    .await
}

/// One pull with `Pulling` and `Pulled` (or `Failed`) events of `owner_id`.
async fn pull_with_events(
    store: &Store,
    cri: &CriClient,
    owner_id: &str,
    image: &str,
    credentials: &[crate::model::ImageRegistryCredential],
) -> Result<(), BackendError> {
    let event = |t, reason: &str, message: &str| {
        if let Err(e) = store.add_event(owner_id, t, reason, message) {
            tracing::warn!(owner = owner_id, "storing event: {e}");
        }
    };
    event(
        EventType::Normal,
        "Pulling",
        &format!("pulling image {image:?}"),
    );
    let started = Instant::now();
    match cri
        .pull_image(image, auth_for(image, credentials).as_ref())
        .await
    {
        Ok(image_ref) => {
            event(
                EventType::Normal,
                "Pulled",
                &format!(
                    "successfully pulled image {image:?} ({image_ref}) in {:.2}s",
                    started.elapsed().as_secs_f64()
                ),
            );
            Ok(())
        }
        Err(e) => {
            event(
                EventType::Warning,
                "Failed",
                &format!("failed to pull image {image:?}: {}", e.status.message()),
            );
            Err(e.into())
        }
    }
}

/// Background part of image cache creation: pulls every image, then Ready (or Failed).
pub async fn create_cache(store: Store, cri: CriClient, id: String, spec: ImageCacheSpec) {
    let mut failed = false;
    for image in &spec.images {
        if pull_with_events(&store, &cri, &id, image, &spec.image_registry_credentials)
            .await
            .is_err()
        {
            failed = true;
        }
    }
    let status = if failed {
        ImageCacheStatus::Failed
    } else {
        ImageCacheStatus::Ready
    };
    let (event_type, message) = if failed {
        (EventType::Warning, "some images could not be pulled")
    } else {
        (EventType::Normal, "every image is pulled and unpacked")
    };
    let result = store
        .set_image_cache_status(&id, status)
        .and_then(|_| store.add_event(&id, event_type, status.as_str(), message));
    if let Err(e) = result {
        tracing::warn!(cache = %id, "storing the cache status: {e}");
    }
}

/// Removes the cache's images that no other cache and no group uses, then the record.
pub async fn delete_cache(store: &Store, cri: &CriClient, id: &str) -> Result<(), BackendError> {
    let cache = store
        .image_cache_record(id)?
        .ok_or_else(|| BackendError::NotFound(format!("image cache {id}")))?;
    let mut in_use: HashSet<String> = HashSet::new();
    for other in store.image_cache_records()? {
        if other.id != id {
            in_use.extend(other.spec.images.iter().map(|i| normalise_image(i)));
        }
    }
    for group in store.group_records()? {
        in_use.extend(
            group
                .spec
                .all_containers()
                .map(|c| normalise_image(&c.image)),
        );
    }
    for image in &cache.spec.images {
        if in_use.contains(&normalise_image(image)) {
            continue;
        }
        if let Err(e) = cri.remove_image(image).await {
            if !e.is_not_found() {
                tracing::warn!(cache = id, "{e}");
            }
        }
    }
    store.delete_image_cache(id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Container;

    fn container(name: &str, image: &str, policy: ImagePullPolicy) -> Container {
        serde_json::from_value::<Container>(serde_json::json!({
            "name": name, "image": image,
        }))
        .map(|mut c| {
            c.image_pull_policy = policy;
            c
        })
        .unwrap()
    }

    #[test]
    fn strictest_policy_per_image_in_spec_order() {
        let spec = ContainerGroupSpec {
            name: "g".into(),
            cpu: 1.0,
            memory: 2.0,
            restart_policy: Default::default(),
            containers: vec![
                container("a", "busybox", ImagePullPolicy::IfNotPresent),
                container("b", "nginx", ImagePullPolicy::Never),
                container("c", "busybox", ImagePullPolicy::Always),
            ],
            init_containers: vec![container("i", "alpine", ImagePullPolicy::Never)],
            volumes: vec![],
            image_registry_credentials: vec![],
            tags: vec![],
            security_context: None,
            ephemeral_storage: None,
            termination_grace_period_seconds: 30,
            auto_match_image_cache: false,
            image_cache_id: None,
            instance_type: None,
            gpu: 0,
            gpu_devices: vec![],
            dns_config: None,
        };
        assert_eq!(
            images_with_policy(&spec),
            vec![
                ("alpine".to_string(), ImagePullPolicy::Never),
                ("busybox".to_string(), ImagePullPolicy::Always),
                ("nginx".to_string(), ImagePullPolicy::Never),
            ]
        );
    }
}
