from difflane.cli import main

main()
