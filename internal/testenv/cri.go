package testenv

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

// CRIPull asks the CRI plugin of this containerd to pull image, as a kubelet does: the
// runtime.v1.ImageService/PullImage call on containerd's socket. The plugin resolves image with its
// own registry configuration (config_path of [plugins."io.containerd.grpc.v1.cri".registry]), not
// ctr's flags, and keeps it in containerd namespace k8s.io. It returns the image reference the plugin
// answers (its image ID, sha256:<config digest>); a refused pull is the plugin's error.
//
// The two messages are encoded by hand (PullImageRequest{image: ImageSpec{image}} and
// PullImageResponse{image_ref}, both field 1 of k8s.io/cri-api's api.proto) so that the tests need no
// Kubernetes module for one call.
func (c *Containerd) CRIPull(ctx context.Context, image string) (string, error) {
	conn, err := grpc.NewClient("unix://"+c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", fmt.Errorf("CRI PullImage %s: %w", image, err)
	}
	defer conn.Close()
	spec := protowire.AppendTag(nil, 1, protowire.BytesType)
	spec = protowire.AppendString(spec, image)
	req := protowire.AppendTag(nil, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, spec)
	var resp []byte
	if err := conn.Invoke(ctx, "/runtime.v1.ImageService/PullImage", req, &resp, grpc.ForceCodec(rawCodec{})); err != nil {
		return "", fmt.Errorf("CRI PullImage %s: %w", image, err)
	}
	for b := resp; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", fmt.Errorf("CRI PullImage %s: bad response %x", image, resp)
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			ref, n := protowire.ConsumeString(b)
			if n < 0 {
				return "", fmt.Errorf("CRI PullImage %s: bad response %x", image, resp)
			}
			return ref, nil
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return "", fmt.Errorf("CRI PullImage %s: bad response %x", image, resp)
		}
		b = b[n:]
	}
	return "", fmt.Errorf("CRI PullImage %s: no image_ref in the response", image)
}

// rawCodec sends and receives a gRPC message as the bytes it is given.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" } // what containerd's server expects on the wire

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: marshal %T", v)
	}
	return b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: unmarshal into %T", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}
