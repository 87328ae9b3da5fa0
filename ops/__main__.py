from ops.watch import main

main()
