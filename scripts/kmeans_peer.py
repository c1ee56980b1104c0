#!/usr/bin/env python3
"""The k-means peers for `cargo xtask bench kmeans`: scikit-learn and faiss-cpu on the data file
the Rust benchmark wrote, with the same K and iteration count. Prints one JSON line per peer.

Timing follows what each library exposes:
- scikit-learn: `kmeans_plusplus` (the same greedy k-means++ its KMeans uses) timed on its own,
  then `KMeans(init=those centres, n_init=1, algorithm="lloyd", tol=0)` timed for the iterations.
- faiss: `faiss.Kmeans` (random seeding, no subsampling) timed whole; it has no separate seeding.
The final inertia of every peer is recomputed the same way (exact nearest-centroid search with
faiss.IndexFlatL2 in float64 sums), so that the figures compare.
"""
import argparse
import json
import os
import time

import numpy as np


def inertia(x, centres):
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    dist, _ = index.search(x, 1)
    return float(dist.astype(np.float64).sum())


def run_sklearn(x, k, iters, seed):
    from sklearn.cluster import KMeans, kmeans_plusplus

    t0 = time.perf_counter()
    centres, _ = kmeans_plusplus(x, k, random_state=seed)
    seed_s = time.perf_counter() - t0
    km = KMeans(n_clusters=k, init=centres, n_init=1, max_iter=iters, tol=0.0,
                algorithm="lloyd", random_state=seed)
    t0 = time.perf_counter()
    km.fit(x)
    lloyd_s = time.perf_counter() - t0
    return {"peer": "scikit-learn", "seed_s": seed_s, "iters": int(km.n_iter_),
            "iter_s": lloyd_s / max(km.n_iter_, 1), "total_s": seed_s + lloyd_s,
            "inertia": inertia(x, km.cluster_centers_)}


def run_faiss(x, k, iters, seed):
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, verbose=False,
                      max_points_per_centroid=x.shape[0], min_points_per_centroid=1)
    t0 = time.perf_counter()
    km.train(x)
    total = time.perf_counter() - t0
    return {"peer": "faiss", "seed_s": 0.0, "iters": iters, "iter_s": total / iters,
            "total_s": total, "inertia": inertia(x, km.centroids)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--d", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours-centroids", help="our centroids (f32 file) to score the same way")
    a = p.parse_args()
    x = np.fromfile(a.data, dtype="<f4").reshape(a.n, a.d)
    info = {"threads": os.cpu_count()}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()]
    except ImportError:
        pass
    for run in (run_sklearn, run_faiss):
        result = run(x, a.k, a.iters, a.seed)
        result.update(info)
        print(json.dumps(result), flush=True)
    if a.ours_centroids:
        c = np.fromfile(a.ours_centroids, dtype="<f4").reshape(a.k, a.d)
        print(json.dumps({"peer": "ours-rescored", "inertia": inertia(x, c)}), flush=True)


if __name__ == "__main__":
    main()
