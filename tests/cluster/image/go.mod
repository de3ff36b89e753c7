// Wrapper module: the image tools of the test node — ocipack (packs local files into an OCI image
// tarball with no daemon or registry) and pause (the pod sandbox's process).
module leaderlock.dev/tests/cluster/image

go 1.26.0

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)

tool (
	leaderlock.dev/tests/cluster/image/ocipack
	leaderlock.dev/tests/cluster/image/pause
)
