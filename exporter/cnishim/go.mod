module flowattr/cnishim

go 1.22
