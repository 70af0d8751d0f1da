// Package deploy_test checks the Kubernetes manifests in deploy/ offline:
// every document decodes strictly into its Kubernetes API type, and what
// they say about trustproxy (ports, probes, config keys, mounted files)
// agrees with trustproxy's own.
package deploy_test

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/trustproxy/trustproxy/config"
)

// objects decodes every manifest under deploy/, strictly, by kind and name.
func objects(t *testing.T) map[string]any {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	out := map[string]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(b, []byte("\n---\n")) {
			var meta struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := sigsyaml.Unmarshal(doc, &meta); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			var obj any
			switch meta.Kind {
			case "Deployment":
				obj = &appsv1.Deployment{}
			case "Service":
				obj = &corev1.Service{}
			case "ConfigMap":
				obj = &corev1.ConfigMap{}
			case "Secret":
				obj = &corev1.Secret{}
			case "NetworkPolicy":
				obj = &networkingv1.NetworkPolicy{}
			case "PodDisruptionBudget":
				obj = &policyv1.PodDisruptionBudget{}
			default:
				t.Fatalf("%s document %d: kind %q is not checked here; add it", f, i, meta.Kind)
			}
			if err := sigsyaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s document %d (%s): %v", f, i, meta.Kind, err)
			}
			out[meta.Kind+"/"+meta.Metadata.Name] = obj
		}
	}
	return out
}

func TestManifests(t *testing.T) {
	objs := objects(t)
	dep := objs["Deployment/trustproxy"].(*appsv1.Deployment)
	cm := objs["ConfigMap/trustproxy"].(*corev1.ConfigMap)
	secret := objs["Secret/trustproxy"].(*corev1.Secret)
	svc := objs["Service/trustproxy"].(*corev1.Service)
	pdb := objs["PodDisruptionBudget/trustproxy"].(*policyv1.PodDisruptionBudget)

	// The configuration decodes into trustproxy's own schema, unknown keys refused.
	var cfg config.Config
	dec := yaml.NewDecoder(strings.NewReader(cm.Data["trustproxy.yaml"]))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("ConfigMap trustproxy.yaml: %v", err)
	}

	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Errorf("replicas %v: the point is several", dep.Spec.Replicas)
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	_, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil || len(c.Ports) != 3 || port != "5000" || c.Ports[0].ContainerPort != 5000 {
		t.Errorf("listen %q, container ports %v: want them to agree on 5000", cfg.Listen, c.Ports)
	}
	if _, port, err := net.SplitHostPort(cfg.Metrics.Listen); err != nil || len(c.Ports) != 3 || port != "9090" || c.Ports[1].ContainerPort != 9090 || c.Ports[1].Name != "metrics" {
		t.Errorf("metrics.listen %q, container ports %v: want them to agree on 9090", cfg.Metrics.Listen, c.Ports)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != c.Ports[0].Name {
		t.Errorf("liveness probe %+v: want GET /healthz on the registry port", p)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != c.Ports[0].Name {
		t.Errorf("readiness probe %+v: want GET /readyz on the registry port", p)
	}
	if !slices.Equal(c.Args, []string{"serve", "--config", "/etc/trustproxy/trustproxy.yaml"}) {
		t.Errorf("args %v", c.Args)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	if mounts["/etc/trustproxy/trustproxy.yaml"] != "config" || mounts[cfg.DataDir] != "data" || mounts["/etc/trustproxy/secrets"] != "secrets" {
		t.Errorf("mounts %v: want the config file, data_dir %s and the secrets", mounts, cfg.DataDir)
	}
	// Non-root, no privilege, read-only root filesystem.
	if s := pod.SecurityContext; s == nil || s.RunAsNonRoot == nil || !*s.RunAsNonRoot {
		t.Error("the pod may run as root")
	}
	if s := c.SecurityContext; s == nil || s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem ||
		s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation {
		t.Error("the container's root filesystem is writable or it may escalate privileges")
	}
	// Pulls in flight finish before the kubelet kills the pod.
	shutdown := 30 * time.Second // limits.shutdown_timeout's default
	if cfg.Limits.ShutdownTimeout > 0 {
		shutdown = cfg.Limits.ShutdownTimeout
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= shutdown {
		t.Errorf("terminationGracePeriodSeconds %v is not longer than shutdown_timeout %s", g, shutdown)
	}
	// Every file the configuration names under the secrets mount is a key of the Secret.
	for _, f := range []string{cfg.Upstreams[0].Notary.CAFile, cfg.Trust.Signers[0].PublicKey, cfg.Redis.PasswordFile, cfg.Redis.StateKeyFile, cfg.Scan.ReportTokenFile,
		cfg.Trust.Pinning.CA["docker.io/"]} {
		key, ok := strings.CutPrefix(f, "/etc/trustproxy/secrets/")
		if _, present := secret.StringData[key]; !ok || !present {
			t.Errorf("the configuration names %s, which the Secret does not hold", f)
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if _, port, err := net.SplitHostPort(cfg.Redis.PeerListen); err != nil || len(c.Ports) != 3 || port != "5001" || c.Ports[2].ContainerPort != 5001 || c.Ports[2].Name != "peer" {
		t.Errorf("redis.peer_listen %q, container ports %v: want them to agree on 5001", cfg.Redis.PeerListen, c.Ports)
	}
	if env["TRUSTPROXY_REPLICA_URL"] != "https://$(POD_IP):5001" {
		t.Errorf("TRUSTPROXY_REPLICA_URL %q: want the pod's own address on the peer listener, over TLS", env["TRUSTPROXY_REPLICA_URL"])
	}
	// The peer certificates come from a Secret of their own, mounted where peer_tls reads them.
	peerTLS := objs["Secret/trustproxy-peer-tls"].(*corev1.Secret)
	if mounts["/etc/trustproxy/peer-tls"] != "peer-tls" {
		t.Errorf("mounts %v: want the peer certificates at /etc/trustproxy/peer-tls", mounts)
	}
	for _, v := range pod.Volumes {
		if v.Name == "peer-tls" && (v.Secret == nil || v.Secret.SecretName != peerTLS.Name) {
			t.Errorf("volume peer-tls %+v is not the Secret %s", v.VolumeSource, peerTLS.Name)
		}
	}
	tlsFiles := cfg.Redis.PeerTLS
	for _, f := range []string{tlsFiles.CAFile, tlsFiles.CertFile, tlsFiles.KeyFile} {
		key, ok := strings.CutPrefix(f, "/etc/trustproxy/peer-tls/")
		if _, present := peerTLS.StringData[key]; !ok || !present {
			t.Errorf("redis.peer_tls names %s, which the Secret %s does not hold", f, peerTLS.Name)
		}
	}
	// Only the replicas reach the peer port.
	np := objs["NetworkPolicy/trustproxy-peers"].(*networkingv1.NetworkPolicy)
	peerOpen := false
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port == nil || p.Port.String() != "peer" {
				continue
			}
			peerOpen = true
			if len(rule.From) == 0 {
				t.Error("the NetworkPolicy admits anyone to the peer port")
			}
			for _, from := range rule.From {
				if from.PodSelector == nil || from.NamespaceSelector != nil || from.IPBlock != nil {
					t.Errorf("the NetworkPolicy admits %+v to the peer port: want the replicas only", from)
					continue
				}
				for k, v := range from.PodSelector.MatchLabels {
					if dep.Spec.Template.Labels[k] != v {
						t.Errorf("the NetworkPolicy admits pods %s=%s to the peer port, the replicas are labelled %v", k, v, dep.Spec.Template.Labels)
					}
				}
			}
		}
	}
	for k, v := range np.Spec.PodSelector.MatchLabels {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("the NetworkPolicy selects %s=%s, the pods are labelled %v", k, v, dep.Spec.Template.Labels)
		}
	}
	if !peerOpen {
		t.Error("the NetworkPolicy does not admit the replicas to the peer port")
	}
	for _, e := range c.Env {
		if r := e.ValueFrom; r != nil && r.SecretKeyRef != nil {
			if _, ok := secret.StringData[r.SecretKeyRef.Key]; !ok || r.SecretKeyRef.Name != secret.Name {
				t.Errorf("env %s names secret key %s/%s, which does not exist", e.Name, r.SecretKeyRef.Name, r.SecretKeyRef.Key)
			}
		}
	}
	// The Service and the PDB select the pods; the scanners reach the Service.
	labels := dep.Spec.Template.Labels
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			t.Errorf("the Service selects %s=%s, the pods are labelled %v", k, v, labels)
		}
	}
	for k, v := range pdb.Spec.Selector.MatchLabels {
		if labels[k] != v {
			t.Errorf("the PodDisruptionBudget selects %s=%s, the pods are labelled %v", k, v, labels)
		}
	}
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() >= int(*dep.Spec.Replicas) {
		t.Errorf("minAvailable %v leaves no pod to disrupt among %d", pdb.Spec.MinAvailable, *dep.Spec.Replicas)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 5000 || svc.Spec.Ports[0].TargetPort.String() != c.Ports[0].Name {
		t.Errorf("Service ports %v", svc.Spec.Ports)
	}
	if cfg.Scan.RegistryURL != "http://"+svc.Name+"."+"trustproxy.svc:5000" {
		t.Errorf("scan.registry_url %q is not the Service's address", cfg.Scan.RegistryURL)
	}
	if redis, ok := objs["Service/redis"].(*corev1.Service); !ok || len(cfg.Redis.Addrs) != 1 || !strings.HasPrefix(cfg.Redis.Addrs[0], redis.Name+".") {
		t.Errorf("redis.addrs %v do not name the redis Service", cfg.Redis.Addrs)
	}
}
