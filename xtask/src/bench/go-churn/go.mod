module example.com/gochurn

go 1.19
