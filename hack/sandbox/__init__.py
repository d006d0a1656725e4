"""The local sandbox: a real single-node Kubernetes cluster where none is at hand.

kube-apiserver + etcd, kube-scheduler, kube-controller-manager and a kubelet on containerd,
built or installed from Debian; a CNCF distribution registry; the real Kaniko executor in an
image the sandbox makes. Used by the cluster test tier, ``make demo`` and the build-loop
benchmark; never by the operator.
"""
