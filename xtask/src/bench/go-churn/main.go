// The Go side of the benchmark: an HTTP server and client in one process, every request on a
// connection of its own (a Transport with keep-alives off, so each one is dialed through
// net/http's dial queue, where probe's uprobes sit). `go-churn CONNECTIONS CONCURRENCY`:
// waits for a line on stdin, makes the requests, prints `rate CONN_PER_S`.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

func main() {
	connections, _ := strconv.Atoi(os.Args[1])
	concurrency, _ := strconv.Atoi(os.Args[2])
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("y"))
	})}
	server.SetKeepAlivesEnabled(false)
	go server.Serve(listener)
	url := "http://" + listener.Addr().String() + "/"
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	bufio.NewReader(os.Stdin).ReadString('\n')
	start := time.Now()
	var wg sync.WaitGroup
	per := connections / concurrency
	for i := 0; i < concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < per; j++ {
				resp, err := client.Get(url)
				if err != nil {
					panic(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("rate %.1f\n", float64(per*concurrency)/time.Since(start).Seconds())
}
