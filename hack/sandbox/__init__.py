"""The local sandbox: real parts that stand in for a cluster where none is at hand.

A kube-apiserver + etcd built from Debian's source package, a CNCF distribution registry,
and a test "kubelet" that runs each Kaniko build pod's build with buildah (Kaniko itself
cannot run here). Used by the cluster test tier and by ``make demo``; never by the operator.
"""
