from ca.cli import main

main()
