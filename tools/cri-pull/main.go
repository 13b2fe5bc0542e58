// cri-pull: one CRI PullImage call, as kubelet makes it, against a container runtime's socket.
// No crictl ships in the package registries these machines reach; this is the one call the
// image-volume measurements need (a pull through the CRI plugin honours its settings, such as
// containerd's discard_unpacked_layers, which `ctr images pull` does not).
//
//	cri-pull --socket /run/containerd/containerd.sock localhost:5000/hf/org/model:main
//
// The request is hand-encoded protobuf (runtime.v1.PullImageRequest{image: {image: ref}}): the
// CRI API's Go package is not in Debian, and this message is two nested strings.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
)

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// field encodes a length-delimited protobuf field.
func field(num int, payload []byte) []byte {
	out := []byte{byte(num<<3 | 2)}
	n := len(payload)
	for n >= 0x80 {
		out = append(out, byte(n)|0x80)
		n >>= 7
	}
	out = append(out, byte(n))
	return append(out, payload...)
}

// firstString decodes field 1 of a message as a string (PullImageResponse.image_ref).
func firstString(msg []byte) string {
	if len(msg) < 2 || msg[0] != 0x0a {
		return ""
	}
	n, shift, i := 0, 0, 1
	for ; i < len(msg); i++ {
		n |= int(msg[i]&0x7f) << shift
		shift += 7
		if msg[i] < 0x80 {
			i++
			break
		}
	}
	if i+n > len(msg) {
		return ""
	}
	return string(msg[i : i+n])
}

func main() {
	socket := flag.String("socket", "/run/containerd/containerd.sock", "the CRI socket")
	timeout := flag.Duration("timeout", 30*time.Minute, "how long the pull may take")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: cri-pull [--socket S] IMAGE")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, "unix://"+*socket,
		grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fmt.Fprintln(os.Stderr, "cri-pull: connecting:", err)
		os.Exit(1)
	}
	defer conn.Close()
	req := field(1, field(1, []byte(flag.Arg(0))))
	var resp []byte
	start := time.Now()
	err = conn.Invoke(ctx, "/runtime.v1.ImageService/PullImage", &req, &resp, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "cri-pull:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %.3f\n", firstString(resp), time.Since(start).Seconds())
}
