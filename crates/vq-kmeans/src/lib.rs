//! Rayon-parallel CPU k-means for codebook initialisation (see issue 3).
